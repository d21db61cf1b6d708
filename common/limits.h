// The documented limits on what kvshare reads from requests and files. Each is checked before
// anything is allocated for the value it bounds; a value beyond one is refused with
// INVALID_ARGUMENT naming the field, the value (cut to kMaxEchoBytes) and the limit. The proto
// comments (proto/kvshare/v1/*.proto) quote these numbers: change both together.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvshare {

// Layers of a model, and so entries of a strategy's kv_source (SmolLM2-135M has 30; the
// largest Llama-family models have under 200).
inline constexpr int kMaxLayers = 1024;

// Names a person or a program chooses: model and corpus names, job ids, worker ids, selector
// keys and values, idempotency keys.
inline constexpr size_t kMaxNameBytes = 256;
// Free text: deprecation reasons, strategy notes.
inline constexpr size_t kMaxTextFieldBytes = 4096;
// Identifiers kvshare computes (hex SHA-256 = 64): fingerprints, strategy ids, hashes.
inline constexpr size_t kMaxIdBytes = 128;

// Files read whole. A strategy of kMaxLayers layers with its provenance is under 32 KiB.
inline constexpr size_t kMaxStrategyFileBytes = size_t{1} << 20;  // 1 MiB
inline constexpr size_t kMaxCatalogFileBytes = size_t{1} << 20;   // 1 MiB
// A registry record or deprecation mark: a strategy plus a few labels.
inline constexpr size_t kMaxRecordFileBytes = size_t{1} << 20;  // 1 MiB
// A search job record (its request without calibration_text, progress, result).
inline constexpr size_t kMaxJobRecordBytes = size_t{4} << 20;  // 4 MiB
// Nesting of any JSON document kvshare reads (its own files nest 3 deep).
inline constexpr int kMaxJsonDepth = 64;

// A search request (CreateSearchJob, `kvshare search`).
inline constexpr int kMaxCalibrationSamples = 4096;  // samples (calibration lines)
inline constexpr int kMaxCalibrationTokens = 32768;  // tokens per sample (also <= context)
inline constexpr int kMaxHeldoutTokens = 1 << 28;    // heldout_tokens (also <= the text's)

// A Generate request: prompt text (or the sum of the chat messages' bytes) and chat turns.
// Token ids and max_tokens are bounded by the model's context.
inline constexpr size_t kMaxPromptBytes = size_t{1} << 20;  // 1 MiB
inline constexpr int kMaxChatMessages = 1024;

// Values echoed in error messages and logs are cut to this many bytes (a 20 KB job id must
// not overflow gRPC's metadata limit in the status message).
inline constexpr size_t kMaxEchoBytes = 64;

}  // namespace kvshare
