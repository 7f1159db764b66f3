"""Zone transfers: projection onto slices, IXFR/AXFR serving, NOTIFY, the secondary role."""
