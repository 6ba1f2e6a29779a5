/* Reference encoder of the edgehema wire protocol v1. See ehwire.h and PROTOCOL.md. */
#include "ehwire.h"

#include <string.h>

#ifndef EHW_CRC_NO_TABLE
static uint32_t crc_table[256];
static int crc_table_ready = 0;

static void crc_init(void)
{
    uint32_t i, j, c;
    for (i = 0; i < 256u; i++) {
        c = i;
        for (j = 0; j < 8u; j++) {
            c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
        }
        crc_table[i] = c;
    }
    crc_table_ready = 1;
}
#endif

uint32_t ehw_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    crc = ~crc;
#ifndef EHW_CRC_NO_TABLE
    if (!crc_table_ready) {
        crc_init();
    }
    for (i = 0; i < len; i++) {
        crc = crc_table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
    }
#else
    for (i = 0; i < len; i++) {
        int k;
        crc ^= data[i];
        for (k = 0; k < 8; k++) {
            crc = (crc & 1u) ? (0xEDB88320u ^ (crc >> 1)) : (crc >> 1);
        }
    }
#endif
    return ~crc;
}

/* Streaming COBS encoder: bytes go in one at a time, the code byte of each block is back-filled.
 * A block of 254 non-zero bytes that ends the data gets no further (empty) block, as in the
 * reference algorithm of Cheshire and Baker: hence the count of bytes still to come. */
typedef struct {
    uint8_t *out;
    size_t cap;
    size_t pos;       /* next free byte */
    size_t code_pos;  /* where the current block's code byte goes */
    size_t remaining; /* input bytes not yet fed */
    uint8_t code;
    int overflow;
} cobs_state;

static void cobs_begin(cobs_state *s, uint8_t *out, size_t cap, size_t total)
{
    s->out = out;
    s->cap = cap;
    s->code_pos = 0;
    s->pos = 1;
    s->remaining = total;
    s->code = 1;
    s->overflow = (cap < 2u);
}

static void cobs_put(cobs_state *s, uint8_t b)
{
    if (s->overflow) {
        return;
    }
    s->remaining--;
    if (b != 0u) {
        s->out[s->pos++] = b;
        s->code++;
    }
    if (b == 0u || s->code == 0xFFu) {
        s->out[s->code_pos] = s->code;
        s->code = 1;
        s->code_pos = s->pos;
        if (b == 0u || s->remaining > 0u) {
            s->pos++;
        }
    }
    if (s->pos >= s->cap) {
        s->overflow = 1;
    }
}

static size_t cobs_end(cobs_state *s)
{
    if (s->overflow || s->pos + 1u > s->cap) {
        return 0;
    }
    if (s->code_pos < s->pos) {
        s->out[s->code_pos] = s->code;
    }
    s->out[s->pos++] = 0x00u; /* frame delimiter */
    return s->pos;
}

size_t ehw_encode_frame(uint8_t type, uint16_t seq, const uint8_t *payload, size_t len,
                        uint8_t *out, size_t out_cap)
{
    uint8_t header[EHW_HEADER_SIZE];
    uint8_t crc_bytes[EHW_CRC_SIZE];
    uint32_t crc;
    cobs_state s;
    size_t i;

    if (len > EHW_MAX_PAYLOAD) {
        return 0;
    }
    header[0] = (uint8_t)EHW_VERSION;
    header[1] = type;
    header[2] = (uint8_t)(seq & 0xFFu);
    header[3] = (uint8_t)(seq >> 8);
    header[4] = (uint8_t)(len & 0xFFu);
    header[5] = (uint8_t)(len >> 8);
    crc = ehw_crc32(0u, header, sizeof header);
    crc = ehw_crc32(crc, payload, len);
    for (i = 0; i < 4u; i++) {
        crc_bytes[i] = (uint8_t)(crc >> (8u * i));
    }
    cobs_begin(&s, out, out_cap, sizeof header + len + sizeof crc_bytes);
    for (i = 0; i < sizeof header; i++) {
        cobs_put(&s, header[i]);
    }
    for (i = 0; i < len; i++) {
        cobs_put(&s, payload[i]);
    }
    for (i = 0; i < sizeof crc_bytes; i++) {
        cobs_put(&s, crc_bytes[i]);
    }
    return cobs_end(&s);
}

void ehw_writer_init(ehw_writer *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = 0;
}

static void put_le(ehw_writer *w, uint64_t v, size_t n)
{
    size_t i;
    if (w->overflow || w->len + n > w->cap) {
        w->overflow = 1;
        return;
    }
    for (i = 0; i < n; i++) {
        w->buf[w->len++] = (uint8_t)(v >> (8u * i));
    }
}

void ehw_put_u8(ehw_writer *w, uint8_t v) { put_le(w, v, 1); }
void ehw_put_u16(ehw_writer *w, uint16_t v) { put_le(w, v, 2); }
void ehw_put_u32(ehw_writer *w, uint32_t v) { put_le(w, v, 4); }
void ehw_put_u64(ehw_writer *w, uint64_t v) { put_le(w, v, 8); }

void ehw_put_f32(ehw_writer *w, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits); /* IEEE-754 binary32, as on every Cortex-M with or without FPU */
    put_le(w, bits, 4);
}

void ehw_put_str8(ehw_writer *w, const char *s)
{
    size_t n = strlen(s);
    size_t i;
    if (n > 255u) {
        n = 255u;
    }
    ehw_put_u8(w, (uint8_t)n);
    for (i = 0; i < n; i++) {
        ehw_put_u8(w, (uint8_t)s[i]);
    }
}

int ehw_payload_hello(ehw_writer *w, const char *instrument_id, const char *firmware, const char *profile,
                      uint8_t n_features, const char *const *names, const float *scales, const float *offsets)
{
    uint8_t i;
    ehw_put_str8(w, instrument_id);
    ehw_put_str8(w, firmware);
    ehw_put_str8(w, profile);
    ehw_put_u8(w, n_features);
    for (i = 0; i < n_features; i++) {
        ehw_put_str8(w, names[i]);
        ehw_put_f32(w, scales[i]);
        ehw_put_f32(w, offsets[i]);
    }
    return w->overflow ? -1 : 0;
}

int ehw_payload_sample_begin(ehw_writer *w, uint32_t tag, const char *sample_id, const char *species,
                             uint8_t mode, float dilution, uint64_t started_unix_us)
{
    ehw_put_u32(w, tag);
    ehw_put_str8(w, sample_id);
    ehw_put_str8(w, species);
    ehw_put_u8(w, mode);
    ehw_put_f32(w, dilution);
    ehw_put_u64(w, started_unix_us);
    return w->overflow ? -1 : 0;
}

int ehw_payload_events(ehw_writer *w, uint32_t tag, uint32_t first_index, uint16_t count,
                       uint8_t n_features, const uint16_t *raw)
{
    size_t i, n = (size_t)count * n_features;
    ehw_put_u32(w, tag);
    ehw_put_u32(w, first_index);
    ehw_put_u16(w, count);
    for (i = 0; i < n; i++) {
        ehw_put_u16(w, raw[i]);
    }
    return w->overflow ? -1 : 0;
}

int ehw_payload_sample_end(ehw_writer *w, uint32_t tag, uint32_t event_total, uint64_t elapsed_us,
                           uint32_t volume_nl, uint8_t status)
{
    ehw_put_u32(w, tag);
    ehw_put_u32(w, event_total);
    ehw_put_u64(w, elapsed_us);
    ehw_put_u32(w, volume_nl);
    ehw_put_u8(w, status);
    return w->overflow ? -1 : 0;
}

int ehw_payload_heartbeat(ehw_writer *w, uint32_t uptime_ms, uint8_t state)
{
    ehw_put_u32(w, uptime_ms);
    ehw_put_u8(w, state);
    return w->overflow ? -1 : 0;
}

int ehw_payload_status(ehw_writer *w, uint8_t severity, uint16_t code, const char *text)
{
    ehw_put_u8(w, severity);
    ehw_put_u16(w, code);
    ehw_put_str8(w, text);
    return w->overflow ? -1 : 0;
}
