/* XDP hot answers: a UDP DNS query whose answer is in the maps is answered
 * from the driver hook (XDP_TX); anything else goes up untouched (XDP_PASS).
 *
 * Compiled by bcc (zoneslice/xdp/loader.py) with -I bpf/ and -D sizes.
 * Map layouts: zs_maps.h.  The program changes nothing before it has decided
 * to answer, so every XDP_PASS leaves the frame as it came; a failure after
 * that point (never seen: helpers on bounds already checked) drops the frame
 * rather than pass a half-written one up (counted in err_store).
 *
 * Phases hand over through the per-CPU scratch map only (see zs_maps.h), so
 * the verifier explores each phase once instead of once per path into it.
 * Values an answer depends on -- ID, question case, RD/AD/CD -- come from the
 * query; everything else is the engine's own bytes (zoneslice/hot/entries.py).
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/in.h>

#include "zs_maps.h"

BPF_ARRAY(zs_config, struct zs_config, 1);
BPF_PERCPU_ARRAY(zs_counters, __u64, ZS_C_MAX);
BPF_PERCPU_ARRAY(zs_scratch, struct zs_scratch, 1);
/* Answers sent per hot key, so the live ranking sees the names the engine no longer does. */
BPF_PERCPU_ARRAY(zs_hits, __u64, ZS_MAX_SLOTS);
/* No preallocation: a replaced or deleted element is freed after an RCU grace
 * period, so a reader never sees an answer half overwritten by an update. */
BPF_F_TABLE("hash", struct zs_key, struct zs_answer, zs_exact, ZS_MAX_EXACT, BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct zs_key, struct zs_answer, zs_deleg, ZS_MAX_DELEG, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct zs_addr, __u8, zs_addrs, 64, 0);

#define DNS_RD 0x0100
#define DNS_AD 0x0020
#define DNS_CD 0x0010
#define T_OPT 41
#define T_DS 43
#define T_RRSIG 46
#define T_NSEC 47
#define T_ANY 255
#define O_COOKIE 10

struct vlanhdr {
    __be16 tci;
    __be16 proto;
};

static __always_inline int count(int idx)
{
    __u32 k = idx;
    __u64 *c = zs_counters.lookup(&k);
    if (c)
        *c += 1;
    return idx;
}

static __always_inline int pass(int reason)
{
    count(reason);
    return XDP_PASS;
}

static __always_inline int drop(int reason)
{
    count(reason);
    return XDP_DROP;
}

/* An index masked in a way the compiler cannot drop: the verifier sees the bound. */
#define MASKED(x, m) ({ __u64 __v = (x); asm volatile("%0 &= " #m : "+r"(__v)); __v; })

#define RELOAD(x) (*(volatile __typeof__(x) *)&(x))

static __always_inline __u32 fold(__u32 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return s;
}

static __always_inline __u16 zs_swab16(__u16 x)
{
    return (x >> 8) | (x << 8);
}

static __always_inline __u32 rd16(const __u8 *p)
{
    return ((__u32)p[0] << 8) | p[1];
}

#define CONTINUE (-1)

/* Phase 1: Ethernet (+VLAN), IPv4/IPv6, UDP, DNS header; the rest of the
 * message is copied into s->q.  Only s carries anything to the next phase. */
static __always_inline int parse_headers(struct xdp_md *ctx, struct zs_config *cfg,
                                         struct zs_scratch *s)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;

    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return pass(ZS_C_PASS_NOT_DNS);
    __u16 proto = eth->h_proto;
    __u32 l3 = sizeof(struct ethhdr);
#pragma unroll
    for (int v = 0; v < 2; v++) {
        if (proto == htons(ETH_P_8021Q) || proto == htons(ETH_P_8021AD)) {
            struct vlanhdr *vh = data + l3;
            if ((void *)(vh + 1) > end)
                return pass(ZS_C_PASS_NOT_DNS);
            proto = vh->proto;
            l3 += sizeof(struct vlanhdr);
        }
    }
    if (eth->h_dest[0] & 1)
        return pass(ZS_C_PASS_ADDRESS);

    __u32 l4, ip_payload, v6;
    struct zs_addr dst = {};
    __u32 addr_sum = 0;
    if (proto == htons(ETH_P_IP)) {
        struct iphdr *ip = data + l3;
        if ((void *)(ip + 1) > end)
            return pass(ZS_C_PASS_NOT_DNS);
        if (ip->version != 4 || ip->protocol != IPPROTO_UDP)
            return pass(ZS_C_PASS_NOT_DNS);
        if (ip->ihl != 5)
            return pass(ZS_C_PASS_IP_OPTIONS);
        if (ip->frag_off & htons(0x3fff))
            return pass(ZS_C_PASS_FRAGMENT);
        __u16 *w = (__u16 *)ip;
        __u32 hs = 0;
#pragma unroll
        for (int i = 0; i < 10; i++)
            hs += w[i];
        if (fold(hs) != 0xffff)
            return pass(ZS_C_PASS_MALFORMED);
        __u32 tot = ntohs(ip->tot_len);
        if (tot < 20 || l3 + tot > (__u32)(end - data))
            return pass(ZS_C_PASS_MALFORMED);
        __u32 da = ntohl(ip->daddr);
        if ((da >> 28) == 0xe || da == 0xffffffff)
            return pass(ZS_C_PASS_ADDRESS);
        dst.a[10] = 0xff;
        dst.a[11] = 0xff;
        __builtin_memcpy(&dst.a[12], &ip->daddr, 4);
        addr_sum = rd16((__u8 *)&ip->saddr) + rd16((__u8 *)&ip->saddr + 2)
                 + rd16((__u8 *)&ip->daddr) + rd16((__u8 *)&ip->daddr + 2);
        l4 = l3 + 20;
        ip_payload = tot - 20;
        v6 = 0;
    } else if (proto == htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data + l3;
        if ((void *)(ip6 + 1) > end)
            return pass(ZS_C_PASS_NOT_DNS);
        if (ip6->version != 6)
            return pass(ZS_C_PASS_NOT_DNS);
        if (ip6->nexthdr != IPPROTO_UDP) {
            if (ip6->nexthdr == 44)
                return pass(ZS_C_PASS_FRAGMENT);
            if (ip6->nexthdr == 0 || ip6->nexthdr == 43 || ip6->nexthdr == 60)
                return pass(ZS_C_PASS_IP_OPTIONS);
            return pass(ZS_C_PASS_NOT_DNS);
        }
        if (ip6->daddr.in6_u.u6_addr8[0] == 0xff)
            return pass(ZS_C_PASS_ADDRESS);
        ip_payload = ntohs(ip6->payload_len);
        if (l3 + 40 + ip_payload > (__u32)(end - data))
            return pass(ZS_C_PASS_MALFORMED);
        __builtin_memcpy(dst.a, &ip6->daddr, 16);
        __u8 *a = (__u8 *)&ip6->saddr;
#pragma unroll
        for (int i = 0; i < 32; i += 2)
            addr_sum += rd16(a + i);
        l4 = l3 + 40;
        v6 = 1;
    } else {
        return pass(ZS_C_PASS_NOT_DNS);
    }

    struct udphdr *udp = data + l4;
    if ((void *)(udp + 1) > end)
        return pass(ZS_C_PASS_NOT_DNS);
    if (udp->dest != htons(cfg->port))
        return pass(ZS_C_PASS_NOT_DNS);
    if (udp->source == 0)
        return pass(ZS_C_PASS_MALFORMED);
    __u32 ulen = ntohs(udp->len);
    if (ulen != ip_payload || ulen < 8 + 12 + 5)
        return pass(ZS_C_PASS_MALFORMED);
    if ((cfg->flags & ZS_CF_ADDR_FILTER) && !zs_addrs.lookup(&dst))
        return pass(ZS_C_PASS_ADDRESS);

    __u8 *h = (__u8 *)(udp + 1);
    if ((void *)(h + 12) > end)
        return pass(ZS_C_PASS_MALFORMED);
    __u32 qflags = rd16(h + 2);
    if ((qflags >> 11) & 0xf)
        return pass(ZS_C_PASS_OPCODE);
    if (qflags & ~(DNS_RD | DNS_AD | DNS_CD))
        return pass(ZS_C_PASS_FLAGS);
    if (rd16(h + 4) != 1)
        return pass(ZS_C_PASS_QDCOUNT);
    __u32 arcount = rd16(h + 10);
    if (rd16(h + 6) || rd16(h + 8) || arcount > 1)
        return pass(ZS_C_PASS_SECTIONS);

    __u32 rem = ulen - 8 - 12;
    if (rem > ZS_QMAX)
        return pass(ZS_C_PASS_SECTIONS);
    if (bpf_xdp_load_bytes(ctx, l4 + 8 + 12, s->q, rem))
        return pass(ZS_C_PASS_MALFORMED);

    s->rem = rem;
    s->l3 = l3;
    s->l4 = l4;
    s->v6 = v6;
    s->ulen = ulen;
    s->addr_sum = addr_sum;
    s->hsum = ntohs(udp->source) + ntohs(udp->dest) + ulen + ntohs(udp->check)
            + rd16(h) + qflags + 1 + arcount;
    s->has_csum = v6 || udp->check;
    s->qflags = qflags;
    s->arcount = arcount;
    return CONTINUE;
}

/* Phase 2: the label structure of the qname (no compression, <= 255 octets). */
static __always_inline int parse_qname(struct zs_scratch *s)
{
    s->lmap[0] = 0;
    s->lmap[1] = 0;
    s->lmap[2] = 0;
    s->lmap[3] = 0;
    __u32 pos = 0;
    for (int i = 0; i < 128; i++) {
        __u32 l = s->q[MASKED(pos, 511)];
        if (l == 0) {
            s->qlen = pos + 1;
            return CONTINUE;
        }
        if (l > 63)
            return pass(ZS_C_PASS_MALFORMED);
        s->lmap[MASKED(pos >> 6, 3)] |= 1ULL << (pos & 63);
        pos += l + 1;
        if (pos > 254)
            return pass(ZS_C_PASS_MALFORMED);
    }
    return pass(ZS_C_PASS_MALFORMED);
}

/* Phase 3: type, class, and nothing or exactly one plain OPT after them. */
static __always_inline int parse_tail(struct zs_config *cfg, struct zs_scratch *s)
{
    __u32 qlen = RELOAD(s->qlen);
    __u32 rem = RELOAD(s->rem);
    if (qlen > 255 || qlen + 4 > rem)
        return pass(ZS_C_PASS_MALFORMED);
    __u32 qtype = rd16(&s->q[MASKED(qlen, 255)]);
    __u32 qclass = rd16(&s->q[MASKED(qlen + 2, 511)]);
    if (qclass != 1)
        return pass(ZS_C_PASS_CLASS);
    __u32 after = qlen + 4;
    __u32 variant = ZS_V_PLAIN;
    __u32 limit = 512;
    if (RELOAD(s->arcount) == 0) {
        if (rem != after)
            return pass(ZS_C_PASS_MALFORMED);
    } else {
        __u8 *o = &s->q[MASKED(after, 511)];
        if (after + 11 > rem)
            return pass(ZS_C_PASS_MALFORMED);
        if (o[0] != 0 || rd16(o + 1) != T_OPT)
            return pass(ZS_C_PASS_SECTIONS);
        __u32 payload = rd16(o + 3);
        if (o[5] != 0 || o[6] != 0)
            return pass(ZS_C_PASS_EDNS);
        __u32 eflags = rd16(o + 7);
        if (eflags & 0x7fff)
            return pass(ZS_C_PASS_EDNS);
        __u32 rdlen = rd16(o + 9);
        if (after + 11 + rdlen != rem)
            return pass(ZS_C_PASS_MALFORMED);
        if (rdlen) {
            /* Only a COOKIE the engine is known to ignore; nothing else. */
            __u32 ocode = rd16(o + 11);
            __u32 olen = rd16(o + 13);
            if (ocode != O_COOKIE || olen + 4 != rdlen)
                return pass(ZS_C_PASS_EDNS);
            if (olen == 8) {
                if (!(cfg->flags & ZS_CF_COOKIE_CLIENT))
                    return pass(ZS_C_PASS_EDNS);
            } else if (olen >= 16 && olen <= 40) {
                if (!(cfg->flags & ZS_CF_COOKIE_FULL))
                    return pass(ZS_C_PASS_EDNS);
            } else {
                return pass(ZS_C_PASS_EDNS);
            }
        }
        variant = (eflags & 0x8000) ? ZS_V_EDNS_DO : ZS_V_EDNS;
        limit = payload;
        if (limit < 512)
            limit = 512;
        __u32 cap = RELOAD(s->v6) ? cfg->max_udp6 : cfg->max_udp;
        if (limit > cap)
            limit = cap;
    }
    s->qtype = qtype;
    s->variant = variant;
    s->limit = limit;
    s->qsum = (qlen & 1) ? zs_swab16(qtype) + zs_swab16(qclass) : qtype + qclass;
    return CONTINUE;
}

/* Phase 4: the key (variant + reversed lower-cased qname) and the question's checksum. */
static __always_inline void build_key(struct zs_scratch *s)
{
    struct zs_key *key = &s->key;
    __u64 *kz = (__u64 *)key->data;
#pragma unroll
    for (int i = 0; i < ZS_KEY_DATA / 8; i++)
        kz[i] = 0;
    key->data[0] = RELOAD(s->variant);
    __u32 qlen = RELOAD(s->qlen);
    __u32 qsum = 0;
    for (__u32 i = 0; i < 255; i++) {
        if (i >= qlen)
            break;
        __u32 c = s->q[MASKED(i, 511)];
        qsum += (i & 1) ? c : (c << 8);
        if (c >= 'A' && c <= 'Z')
            c += 32;
        key->data[MASKED(qlen - i, 255)] = c;
    }
    s->qsum += qsum;
}

/* Phase 5: the stack drops a query whose UDP checksum is wrong; so do we. */
static __always_inline int verify_checksum(struct zs_config *cfg, struct zs_scratch *s)
{
    if (!(cfg->flags & ZS_CF_VERIFY_CSUM) || !RELOAD(s->has_csum))
        return CONTINUE;
    __u32 start = RELOAD(s->qlen) + 4;
    __u32 olen = RELOAD(s->rem) - start;
    __u32 osum = 0;
    for (__u32 i = 0; i < 64; i++) {
        if (i >= olen)
            break;
        __u32 c = s->q[MASKED(start + i, 511)];
        osum += ((start + i) & 1) ? c : (c << 8);
    }
    __u32 vs = RELOAD(s->addr_sum) + IPPROTO_UDP + RELOAD(s->ulen) + RELOAD(s->hsum)
             + RELOAD(s->qsum) + osum;
    if (fold(vs) != 0xffff)
        return pass(ZS_C_PASS_CHECKSUM);
    return CONTINUE;
}

/* Phase 6: the cut at or above the name, else an exact entry.  Below a cut
 * (and at it, for any type but DS/RRSIG/NSEC) the engine's answer is the
 * referral whatever the name, so an exact entry there would hold the same
 * bytes: the LPM lookup goes first and most TLD queries never hash a key.
 * ANY is a referral too (the entry builder probes it); the other meta types
 * (AXFR, IXFR, TSIG...) never take the delegation path. */
static __always_inline struct zs_answer *lookup(struct zs_scratch *s, __u32 *cut, int *kind)
{
    struct zs_key *key = &s->key;
    __u32 qtype = RELOAD(s->qtype);
    __u32 qlen = RELOAD(s->qlen);
    *cut = 0;
    if (qlen > 255)
        return 0;
    if (!(qtype == 0 || qtype == T_OPT || (qtype >= 128 && qtype < T_ANY))) {
        key->head = (qlen + 1) * 8;
        struct zs_answer *ans = zs_deleg.lookup(key);
        if (ans) {
            __u32 dl = ans->deleg_len;
            __u32 c = qlen - dl;
            if (dl && dl <= qlen && ((s->lmap[MASKED(c >> 6, 3)] >> (c & 63)) & 1) &&
                !(c == 0 && (qtype == T_DS || qtype == T_RRSIG || qtype == T_NSEC))) {
                *cut = c;
                *kind = ZS_C_ANSWERED_DELEG;
                return ans;
            }
        }
    }
    key->head = qtype;
    *kind = ZS_C_ANSWERED_EXACT;
    return zs_exact.lookup(key);
}

/* Phase 7: turn the frame into the answer. */
static __always_inline int rewrite(struct xdp_md *ctx, struct zs_scratch *s,
                                   struct zs_answer *ans, __u32 cut)
{
    __u32 qlen = RELOAD(s->qlen);
    __u32 l3 = RELOAD(s->l3);
    __u32 l4 = RELOAD(s->l4);
    if (qlen > 255 || l3 > 22 || l4 > 62)
        return pass(ZS_C_ERR_STORE);
    __u32 dns = l4 + 8;
    __u32 blen = ans->len;
    if (blen > ZS_BODY_MAX)
        return pass(ZS_C_PASS_MISS);
    __u32 rlen = 12 + qlen + 4 + blen;
    if (rlen > RELOAD(s->limit))
        return pass(ZS_C_PASS_TOO_BIG);

    /* Make room.  Drivers with page-sized frames have tailroom; a veth in
     * native mode hands over the sender's skb, which may not, so grow at the
     * front (the XDP headroom) and move headers and question there. */
    __u32 pkt = (__u32)(ctx->data_end - ctx->data);
    int delta = (int)(dns + rlen) - (int)pkt;
    __u32 shift = 0;
    if (delta < 0) {
        if (bpf_xdp_adjust_tail(ctx, delta))
            return pass(ZS_C_ERR_ADJUST);
    } else if (delta > 0 && bpf_xdp_adjust_tail(ctx, delta)) {
        if (bpf_xdp_adjust_head(ctx, -delta) == 0) {
            shift = delta;
        } else {
            if (delta <= ZS_HEAD_GROW || bpf_xdp_adjust_head(ctx, -ZS_HEAD_GROW))
                return pass(ZS_C_ERR_ADJUST);
            if (bpf_xdp_adjust_tail(ctx, delta - ZS_HEAD_GROW)) {
                bpf_xdp_adjust_head(ctx, ZS_HEAD_GROW);
                return pass(ZS_C_ERR_ADJUST);
            }
            shift = ZS_HEAD_GROW;
        }
    }
    /* From here on the frame is ours: a failure drops it rather than pass garbage up. */
    __u32 body = dns + 12 + qlen + 4;
    if (shift) {
        __u64 keep = body;
        asm volatile("" : "+r"(keep));
        if (keep < 1 || keep > ZS_QBUF)
            return drop(ZS_C_ERR_STORE);
        if (bpf_xdp_load_bytes(ctx, shift, s->frame, keep) ||
            bpf_xdp_store_bytes(ctx, 0, s->frame, keep))
            return drop(ZS_C_ERR_STORE);
    }
    __u64 n = ans->len;
    asm volatile("" : "+r"(n));
    if (n > ZS_BODY_MAX)
        return drop(ZS_C_ERR_STORE);
    if (n && bpf_xdp_store_bytes(ctx, body, ans->body, n))
        return drop(ZS_C_ERR_STORE);

    __u32 bsum = ans->csum;
    if (qlen & 1)
        bsum = zs_swab16(bsum);
    for (int i = 0; i < ZS_MAX_FIX; i++) {
        if (i >= ans->nfix)
            break;
        __u32 fp = ans->fix_pos[i];
        __u32 fv = ans->fix_val[i];
        __u32 target = (fv & ZS_FIX_BODY) ? 12 + qlen + 4 + (fv & 0x7fff) : 12 + cut + fv;
        __u16 ptr = 0xc000 | (target & 0x3fff);
        bsum += ((qlen + fp) & 1) ? zs_swab16(ptr) : ptr;
        __u16 be = htons(ptr);
        if (bpf_xdp_store_bytes(ctx, body + fp, &be, 2))
            return drop(ZS_C_ERR_STORE);
    }

    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u16 *hw = data + dns;
    if ((void *)(hw + 6) > end || (void *)(eth + 1) > end)
        return drop(ZS_C_ERR_STORE);

    __u32 qflags = RELOAD(s->qflags);
    __u32 rflags = (ans->flags & ~ans->copy_mask) | (qflags & ans->copy_mask);
    hw[1] = htons(rflags);
    hw[2] = htons(1);
    hw[3] = htons(ans->ancount);
    hw[4] = htons(ans->nscount);
    hw[5] = htons(ans->arcount);

    __u8 mac[ETH_ALEN];
    __builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, mac, ETH_ALEN);

    __u32 ulen = 8 + rlen;
    if (!RELOAD(s->v6)) {
        struct iphdr *ip = data + l3;
        if ((void *)(ip + 1) > end)
            return drop(ZS_C_ERR_STORE);
        __be32 a = ip->saddr;
        ip->saddr = ip->daddr;
        ip->daddr = a;
        ip->tot_len = htons(20 + ulen);
        ip->ttl = 64;
        ip->id = 0;
        ip->frag_off = htons(0x4000);
        ip->check = 0;
        __u16 *w = (__u16 *)ip;
        __u32 hs = 0;
#pragma unroll
        for (int i = 0; i < 10; i++)
            hs += w[i];
        ip->check = ~fold(hs);
    } else {
        struct ipv6hdr *ip6 = data + l3;
        if ((void *)(ip6 + 1) > end)
            return drop(ZS_C_ERR_STORE);
        struct in6_addr a = ip6->saddr;
        ip6->saddr = ip6->daddr;
        ip6->daddr = a;
        ip6->payload_len = htons(ulen);
        ip6->hop_limit = 64;
    }
    struct udphdr *udp = data + l4;
    if ((void *)(udp + 1) > end)
        return drop(ZS_C_ERR_STORE);
    __be16 p = udp->source;
    udp->source = udp->dest;
    udp->dest = p;
    udp->len = htons(ulen);
    udp->check = 0;

    __u32 sum = RELOAD(s->addr_sum) + IPPROTO_UDP + ulen;
    sum += ntohs(udp->source) + ntohs(udp->dest) + ulen;
    sum += ntohs(hw[0]) + rflags + 1 + ans->ancount + ans->nscount + ans->arcount;
    sum += RELOAD(s->qsum) + bsum;
    __u16 csum = ~fold(sum);
    udp->check = htons(csum ? csum : 0xffff);
    return XDP_TX;
}

int zs_hot_answer(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct zs_config *cfg = zs_config.lookup(&zero);
    if (!cfg || !(cfg->flags & ZS_CF_ENABLED))
        return pass(ZS_C_PASS_DISABLED);
    struct zs_scratch *s = zs_scratch.lookup(&zero);
    if (!s)
        return pass(ZS_C_PASS_DISABLED);

    int r = parse_headers(ctx, cfg, s);
    if (r != CONTINUE)
        return r;
    r = parse_qname(s);
    if (r != CONTINUE)
        return r;
    r = parse_tail(cfg, s);
    if (r != CONTINUE)
        return r;
    build_key(s);
    r = verify_checksum(cfg, s);
    if (r != CONTINUE)
        return r;
    __u32 cut;
    int kind;
    struct zs_answer *ans = lookup(s, &cut, &kind);
    if (!ans)
        return pass(ZS_C_PASS_MISS);
    __u32 slot = ans->slot;
    r = rewrite(ctx, s, ans, cut);
    if (r == XDP_TX) {
        count(kind);
        if (slot) {
            __u64 *h = zs_hits.lookup(&slot);
            if (h)
                *h += 1;
        }
    }
    return r;
}
