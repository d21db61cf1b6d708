// What a worker serves: the model, its tokenizer, the strategy versions it holds, and the
// scheduler driving one engine over one KV pool. Built once at start-up (Load) and shared,
// read-only, by the gRPC handlers; the scheduler is the only thing that changes inside.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "inference_service/request_builder.h"
#include "inference_service/scheduler.h"
#include "inference_service/serving_metrics.h"
#include "inference_service/strategy_holder.h"
#include "kernels/device_backend.h"

namespace kvshare {

struct WorkerOptions {
  std::string model_path;         // empty: DefaultModelPath()
  std::string tokenizer_path;     // llama2.c checkpoints; empty: tok<vocab>.bin beside the model
  std::string strategy_path;      // strategy JSON; empty: identity
  uint64_t strategy_version = 1;  // the version the local strategy is published as
  int threads = 0;                // engine threads; 0 = all cores
  bool int8_activations = false;  // CPU: int8-quantized activations (kernels/cpu/matmul.h)
  std::string device = "auto";    // auto | cpu | cuda | cuda:N (kernels/device_backend.h)
  // > 0: the KV pool takes this fraction of the device's free memory after the weights
  // (overrides kv_budget_bytes).
  double kv_memory_fraction = 0.0;
  int64_t kv_budget_bytes = 512LL << 20;  // the KV pool
  int block_tokens = 16;
  KvType kv_type = KvType::kF16;  // how the pool stores K/V (f16 like llama.cpp and vLLM)
  SchedulerOptions scheduler;     // scheduler.step_tokens is also the engine's max_step_rows
  RequestLimits limits;
};

class InferenceWorker {
 public:
  // Loads everything `options` names and publishes the local strategy. Errors name the flag
  // or file at fault. `metrics` (may be null) must outlive the worker.
  static absl::StatusOr<std::unique_ptr<InferenceWorker>> Load(const WorkerOptions& options,
                                                               ServingMetrics* metrics);
  // Stops the scheduler (every accepted request ends, UNAVAILABLE) before the model goes.
  ~InferenceWorker();

  const Model& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  StrategyHolder& strategies() { return *strategies_; }
  Scheduler& scheduler() { return *scheduler_; }
  const RequestLimits& limits() const { return options_.limits; }
  ServingMetrics* metrics() const { return metrics_; }
  // The device the engine runs on (memory as probed at load) and why it was chosen.
  const DeviceInfo& device() const { return device_; }
  const std::string& device_note() const { return device_note_; }

 private:
  InferenceWorker() = default;

  WorkerOptions options_;
  ServingMetrics* metrics_ = nullptr;
  DeviceInfo device_;
  std::string device_note_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<StrategyHolder> strategies_;
  std::unique_ptr<Scheduler> scheduler_;  // last: destroyed first
};

}  // namespace kvshare
