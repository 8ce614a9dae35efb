/* The load generator's own C primitives (bench/_loadgen.pyx includes this header). */
#ifndef RADCORE_BENCH_LG_PRIMITIVES_H
#define RADCORE_BENCH_LG_PRIMITIVES_H

/* MD5 (RFC 1321) and HMAC-MD5 (RFC 2104) for the load generator. Written for this file, not shared
   with radcore: verifying the server's replies with the server's own hash would prove little. */
#include <stdint.h>
#include <string.h>

typedef struct { uint32_t st[4]; uint64_t n; uint8_t buf[64]; } lg_md5;
typedef struct { lg_md5 inner; lg_md5 outer; } lg_hmac;

static const uint32_t LG_K[64] = {
    0xd76aa478U, 0xe8c7b756U, 0x242070dbU, 0xc1bdceeeU, 0xf57c0fafU, 0x4787c62aU, 0xa8304613U, 0xfd469501U,
    0x698098d8U, 0x8b44f7afU, 0xffff5bb1U, 0x895cd7beU, 0x6b901122U, 0xfd987193U, 0xa679438eU, 0x49b40821U,
    0xf61e2562U, 0xc040b340U, 0x265e5a51U, 0xe9b6c7aaU, 0xd62f105dU, 0x02441453U, 0xd8a1e681U, 0xe7d3fbc8U,
    0x21e1cde6U, 0xc33707d6U, 0xf4d50d87U, 0x455a14edU, 0xa9e3e905U, 0xfcefa3f8U, 0x676f02d9U, 0x8d2a4c8aU,
    0xfffa3942U, 0x8771f681U, 0x6d9d6122U, 0xfde5380cU, 0xa4beea44U, 0x4bdecfa9U, 0xf6bb4b60U, 0xbebfbc70U,
    0x289b7ec6U, 0xeaa127faU, 0xd4ef3085U, 0x04881d05U, 0xd9d4d039U, 0xe6db99e5U, 0x1fa27cf8U, 0xc4ac5665U,
    0xf4292244U, 0x432aff97U, 0xab9423a7U, 0xfc93a039U, 0x655b59c3U, 0x8f0ccc92U, 0xffeff47dU, 0x85845dd1U,
    0x6fa87e4fU, 0xfe2ce6e0U, 0xa3014314U, 0x4e0811a1U, 0xf7537e82U, 0xbd3af235U, 0x2ad7d2bbU, 0xeb86d391U,
};
static const uint8_t LG_S[16] = {7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21};

#define LG_ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
#define LG_ROUND(lo, hi, F, IDX, S0) \
    for (i = lo; i < hi; i++) { \
        f = F + a + LG_K[i] + x[IDX]; a = d; d = c; c = b; b += LG_ROTL(f, LG_S[S0 + (i & 3)]); }

static void lg_md5_block(uint32_t *st, const uint8_t *p) {
    uint32_t x[16], a = st[0], b = st[1], c = st[2], d = st[3], f;
    int i;
    for (i = 0; i < 16; i++)
        x[i] = (uint32_t)p[4*i] | (uint32_t)p[4*i+1] << 8 | (uint32_t)p[4*i+2] << 16 | (uint32_t)p[4*i+3] << 24;
    LG_ROUND(0, 16, (d ^ (b & (c ^ d))), i, 0)
    LG_ROUND(16, 32, (c ^ (d & (b ^ c))), (5*i + 1) & 15, 4)
    LG_ROUND(32, 48, (b ^ c ^ d), (3*i + 5) & 15, 8)
    LG_ROUND(48, 64, (c ^ (b | ~d)), (7*i) & 15, 12)
    st[0] += a; st[1] += b; st[2] += c; st[3] += d;
}

static void lg_md5_init(lg_md5 *m) {
    m->st[0] = 0x67452301U; m->st[1] = 0xefcdab89U; m->st[2] = 0x98badcfeU; m->st[3] = 0x10325476U;
    m->n = 0;
}

static void lg_md5_update(lg_md5 *m, const uint8_t *p, size_t n) {
    size_t have = (size_t)(m->n & 63), take;
    m->n += n;
    if (have) {
        take = 64 - have < n ? 64 - have : n;
        memcpy(m->buf + have, p, take); p += take; n -= take; have += take;
        if (have < 64) return;
        lg_md5_block(m->st, m->buf);
    }
    for (; n >= 64; p += 64, n -= 64) lg_md5_block(m->st, p);
    if (n) memcpy(m->buf, p, n);
}

static void lg_md5_final(lg_md5 *m, uint8_t *out) {
    uint64_t bits = m->n << 3;
    size_t have = (size_t)(m->n & 63);
    int i;
    m->buf[have++] = 0x80;
    if (have > 56) { memset(m->buf + have, 0, 64 - have); lg_md5_block(m->st, m->buf); have = 0; }
    memset(m->buf + have, 0, 56 - have);
    for (i = 0; i < 8; i++) m->buf[56 + i] = (uint8_t)(bits >> (8 * i));
    lg_md5_block(m->st, m->buf);
    for (i = 0; i < 16; i++) out[i] = (uint8_t)(m->st[i >> 2] >> (8 * (i & 3)));
}

static void lg_hmac_key(lg_hmac *h, const uint8_t *key, size_t n) {
    uint8_t k[64], pad[64];
    int i;
    memset(k, 0, 64);
    if (n > 64) { lg_md5 m; lg_md5_init(&m); lg_md5_update(&m, key, n); lg_md5_final(&m, k); }
    else memcpy(k, key, n);
    for (i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
    lg_md5_init(&h->inner); lg_md5_update(&h->inner, pad, 64);
    for (i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
    lg_md5_init(&h->outer); lg_md5_update(&h->outer, pad, 64);
}

static void lg_hmac_run(const lg_hmac *h, const uint8_t *p, size_t n, uint8_t *out) {
    lg_md5 m = h->inner;
    uint8_t inner[16];
    lg_md5_update(&m, p, n); lg_md5_final(&m, inner);
    m = h->outer;
    lg_md5_update(&m, inner, 16); lg_md5_final(&m, out);
}

/* Log-linear latency buckets: exact below 128 ns, then 64 per power of two. */
#define LG_HIST_BUCKETS 2048
static inline int lg_hist_index(uint64_t v) {
    int msb, e, idx;
    if (v < 128) return (int)v;
    msb = 63 - __builtin_clzll(v);
    e = msb - 6;
    idx = 128 + (e - 1) * 64 + (int)((v >> e) - 64);
    return idx < LG_HIST_BUCKETS ? idx : LG_HIST_BUCKETS - 1;
}

#endif
