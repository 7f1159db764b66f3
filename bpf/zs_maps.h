/* Shared between hot_answer.c and zoneslice/xdp/maps.py (ctypes mirrors).
 *
 * Keys: the lower-cased wire qname reversed (root first), so that a
 * delegation's name is a bit prefix of every name at or below it and one
 * LPM-trie lookup finds the cut.  data[0] is the EDNS variant, so each
 * variant is its own prefix tree.
 *
 * Any change here must be mirrored in zoneslice/xdp/maps.py.
 */
#ifndef ZS_MAPS_H
#define ZS_MAPS_H

#ifndef ZS_MAX_EXACT
#define ZS_MAX_EXACT 16384
#endif
#ifndef ZS_MAX_DELEG
#define ZS_MAX_DELEG 16384
#endif
#ifndef ZS_MAX_SLOTS
#define ZS_MAX_SLOTS 65536   /* hit counters, one per hot key (slot 0: not counted) */
#endif
#ifndef ZS_BODY_MAX
#define ZS_BODY_MAX 1232
#endif

#define ZS_KEY_DATA 256
#define ZS_MAX_FIX 32
#define ZS_QBUF 512          /* scratch copy of the message after the header */
#define ZS_QMAX 320          /* longest question + OPT the program looks at */
#define ZS_HEAD_GROW 192     /* growth at the front when the tail has too little room */

#define ZS_V_PLAIN 0         /* no OPT in the query */
#define ZS_V_EDNS 1          /* OPT, DO clear */
#define ZS_V_EDNS_DO 2       /* OPT, DO set */

#define ZS_FIX_BODY 0x8000   /* fix_val: pointer target = question end + low 15 bits */

/* config flags */
#define ZS_CF_ENABLED 1
#define ZS_CF_ADDR_FILTER 2      /* answer only packets to an address in zs_addrs */
#define ZS_CF_COOKIE_CLIENT 4    /* a client-only COOKIE option may be dropped */
#define ZS_CF_COOKIE_FULL 8      /* a client+server COOKIE option may be dropped */
#define ZS_CF_VERIFY_CSUM 16     /* pass queries whose UDP checksum is wrong, as the stack drops them */

/* counters (per CPU) */
#define ZS_C_ANSWERED_EXACT 0
#define ZS_C_ANSWERED_DELEG 1
#define ZS_C_PASS_NOT_DNS 2      /* not UDP to the served port on IPv4/IPv6 */
#define ZS_C_PASS_FRAGMENT 3
#define ZS_C_PASS_IP_OPTIONS 4   /* IPv4 options, IPv6 extension headers */
#define ZS_C_PASS_ADDRESS 5      /* multicast/broadcast, or not one of our addresses */
#define ZS_C_PASS_MALFORMED 6
#define ZS_C_PASS_OPCODE 7
#define ZS_C_PASS_FLAGS 8        /* QR, TC, AA, RA, Z or rcode set in the query */
#define ZS_C_PASS_QDCOUNT 9
#define ZS_C_PASS_SECTIONS 10    /* answer/authority records, or additional other than one OPT */
#define ZS_C_PASS_EDNS 11        /* EDNS version > 0, flags, options we cannot drop */
#define ZS_C_PASS_CLASS 12
#define ZS_C_PASS_MISS 13
#define ZS_C_PASS_TOO_BIG 14
#define ZS_C_PASS_DISABLED 15
#define ZS_C_ERR_ADJUST 16
#define ZS_C_ERR_STORE 17
#define ZS_C_PASS_CHECKSUM 18    /* UDP checksum wrong (or partial: tx offload on a veth peer) */
#define ZS_C_MAX 19

struct zs_config {
    __u32 flags;
    __u16 port;              /* served UDP port, host order */
    __u16 max_udp;           /* largest UDP answer over IPv4 (the engine's EDNS size) */
    __u16 max_udp6;          /* same over IPv6 (the engine trims additional data above it) */
    __u16 pad;
};

struct zs_key {
    __u32 head;              /* exact: qtype; LPM: prefix length in bits */
    __u8 data[ZS_KEY_DATA];  /* [0] variant, [1..qlen] reversed lower-cased wire qname, zeros */
};

struct zs_addr {
    __u8 a[16];              /* IPv6, or IPv4-mapped ::ffff:a.b.c.d */
};

struct zs_answer {
    __u16 flags;             /* response flags word; bits in copy_mask come from the query */
    __u16 copy_mask;
    __u16 ancount;
    __u16 nscount;
    __u16 arcount;
    __u16 len;               /* body octets: everything after the question */
    __u16 csum;              /* folded one's-complement sum of body, fixup words as zero */
    __u16 nfix;
    __u16 deleg_len;         /* delegation entries: wire length of the cut's name */
    __u16 slot;              /* index in zs_hits counting this key's XDP answers (0: none) */
    __u16 fix_pos[ZS_MAX_FIX];   /* body offset of a compression pointer to rewrite */
    __u16 fix_val[ZS_MAX_FIX];   /* cut-relative target, or ZS_FIX_BODY | body-relative */
    __u8 body[ZS_BODY_MAX];
};

/* Per-CPU working memory.  The parse is split in phases that hand over only
 * through this struct: values read back from a map are unknown to the
 * verifier, so the paths of one phase (VLAN or not, IPv4 or IPv6, EDNS or
 * not...) merge into one state before the next phase's loops. */
struct zs_scratch {
    struct zs_key key;
    __u32 qlen;              /* wire length of the qname */
    __u32 rem;               /* octets after the DNS header */
    __u32 l3;                /* offset of the IP header */
    __u32 l4;                /* offset of the UDP header */
    __u32 v6;
    __u32 ulen;              /* UDP length of the query */
    __u32 addr_sum;          /* one's-complement sum of both IP addresses */
    __u32 hsum;              /* sum of the query's UDP and DNS header words */
    __u32 qflags;
    __u32 variant;
    __u32 limit;             /* largest answer the client takes */
    __u32 qtype;
    __u32 qsum;              /* sum of the question's words (at even offset) */
    __u32 has_csum;          /* the query carries a UDP checksum (always over IPv6) */
    __u32 arcount;              /* arcount of the query (0 or 1) */
    __u64 lmap[4];           /* bit set at each label start offset of the qname */
    __u8 q[ZS_QBUF + 16];    /* the message after the header; slack for masked indexes */
    __u8 frame[ZS_QBUF];     /* headers + question, when the answer grows at the front */
};

#endif
