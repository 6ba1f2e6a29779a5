/*
 * ehwire: reference encoder of the edgehema wire protocol v1, instrument side.
 * Specification: firmware_bridge/PROTOCOL.md. C99, no dynamic memory, no stdio: the caller owns
 * every buffer. Fits a Cortex-M (the CRC table is 1 KiB of const data; define EHW_CRC_NO_TABLE
 * for a bitwise CRC instead). Multi-byte fields are written little-endian whatever the CPU.
 */
#ifndef EHWIRE_H
#define EHWIRE_H

#include <stddef.h>
#include <stdint.h>

#define EHW_VERSION 1u
#define EHW_MAX_PAYLOAD 4096u
#define EHW_HEADER_SIZE 6u
#define EHW_CRC_SIZE 4u
/* Worst-case size of one encoded frame, delimiter included. */
#define EHW_MAX_FRAME (EHW_HEADER_SIZE + EHW_MAX_PAYLOAD + EHW_CRC_SIZE + \
                       (EHW_HEADER_SIZE + EHW_MAX_PAYLOAD + EHW_CRC_SIZE) / 254u + 3u)

enum ehw_type {
    EHW_HELLO = 0x01,
    EHW_SAMPLE_BEGIN = 0x02,
    EHW_EVENTS = 0x03,
    EHW_SAMPLE_END = 0x04,
    EHW_HEARTBEAT = 0x05,
    EHW_STATUS = 0x06,
    EHW_ACK = 0x81,
    EHW_RESEND = 0x82
};

/* CRC-32/ISO-HDLC (as zlib, Ethernet): pass crc = 0 to start, the previous result to continue. */
uint32_t ehw_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* One frame: COBS(header | payload | CRC-32) followed by the 0x00 delimiter.
 * Returns the number of bytes written to out, or 0 if len > EHW_MAX_PAYLOAD or out_cap is too small
 * (out_cap >= EHW_MAX_FRAME always suffices). */
size_t ehw_encode_frame(uint8_t type, uint16_t seq, const uint8_t *payload, size_t len,
                        uint8_t *out, size_t out_cap);

/* Payload writer: appends little-endian fields to a caller's buffer; sticky overflow flag. */
typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    int overflow;
} ehw_writer;

void ehw_writer_init(ehw_writer *w, uint8_t *buf, size_t cap);
void ehw_put_u8(ehw_writer *w, uint8_t v);
void ehw_put_u16(ehw_writer *w, uint16_t v);
void ehw_put_u32(ehw_writer *w, uint32_t v);
void ehw_put_u64(ehw_writer *w, uint64_t v);
void ehw_put_f32(ehw_writer *w, float v);
void ehw_put_str8(ehw_writer *w, const char *s); /* NUL-terminated, at most 255 bytes used */

/* Payload builders for the instrument's messages (PROTOCOL.md section 3). Return 0 on success,
 * -1 if the payload would not fit the writer. */
int ehw_payload_hello(ehw_writer *w, const char *instrument_id, const char *firmware, const char *profile,
                      uint8_t n_features, const char *const *names, const float *scales, const float *offsets);
int ehw_payload_sample_begin(ehw_writer *w, uint32_t tag, const char *sample_id, const char *species,
                             uint8_t mode, float dilution, uint64_t started_unix_us);
int ehw_payload_events(ehw_writer *w, uint32_t tag, uint32_t first_index, uint16_t count,
                       uint8_t n_features, const uint16_t *raw /* count x n_features, row-major */);
int ehw_payload_sample_end(ehw_writer *w, uint32_t tag, uint32_t event_total, uint64_t elapsed_us,
                           uint32_t volume_nl, uint8_t status);
int ehw_payload_heartbeat(ehw_writer *w, uint32_t uptime_ms, uint8_t state);
int ehw_payload_status(ehw_writer *w, uint8_t severity, uint16_t code, const char *text);

#endif
