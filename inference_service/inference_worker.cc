#include "inference_service/inference_worker.h"

#include "absl/strings/str_cat.h"
#include "common/engine/engine.h"
#include "common/strategy/strategy_binding.h"
#include "kernels/backend.h"
#include "service_runtime/locate.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {

absl::StatusOr<std::unique_ptr<InferenceWorker>> InferenceWorker::Load(const WorkerOptions& options,
                                                                       ServingMetrics* metrics) {
  std::unique_ptr<InferenceWorker> w(new InferenceWorker());
  w->options_ = options;
  w->metrics_ = metrics;

  std::string path = options.model_path;
  if (path.empty()) {
    auto found = DefaultModelPath();
    if (!found.ok()) {
      return absl::Status(
          found.status().code(),
          absl::StrCat("--model not given and no default model: ", found.status().message()));
    }
    path = *found;
  }
  auto model = Model::Load(path, options.tokenizer_path);  // the fingerprint covers it
  if (!model.ok()) return model.status();
  w->model_ = std::move(*model);
  auto tokenizer = LoadTokenizerForModel(*w->model_, options.tokenizer_path);
  if (!tokenizer.ok()) return tokenizer.status();
  w->tokenizer_ = std::move(*tokenizer);

  const Model& m = *w->model_;
  // The KV pool, once the engine exists: a version whose KV plan names a type the pool cannot
  // hold (a backend without it, or int4 on a head_dim that is not whole groups) is refused
  // like one for another model. Set before the first Publish; read-only after.
  auto pool = std::make_shared<const KvCache*>(nullptr);
  w->strategies_ = std::make_unique<StrategyHolder>([&m, pool](const SharingStrategy& s) {
    absl::Status status = ValidateStrategyForModel(s, m);
    if (status.ok() && *pool != nullptr) status = (*pool)->CheckHolds(s);
    return status;
  });
  if (metrics != nullptr) {
    w->strategies_->AddListener([metrics](const VersionedStrategy& v) {
      metrics->strategy_version.Set(static_cast<double>(v.version));
    });
  }
  w->strategies_->AddListener([](const VersionedStrategy& v) {
    spdlog::info("event=strategy_applied version={} strategy_id={} owning_layers={} layers={}",
                 v.version, v.strategy->id(), v.strategy->owning_layers(), v.strategy->n_layers());
  });

  EngineOptions engine_options;
  engine_options.block_tokens = options.block_tokens;
  engine_options.kv_type = options.kv_type;
  engine_options.kv_pool_bytes = options.kv_budget_bytes;
  engine_options.max_step_rows = options.scheduler.step_tokens;
  engine_options.kv_memory_fraction = options.kv_memory_fraction;
  DeviceOptions device_options;
  device_options.device = options.device;
  device_options.cpu.threads = options.threads;
  device_options.cpu.matmul.activations =
      options.int8_activations ? cpu::Activations::kInt8 : cpu::Activations::kF32;
  auto device = MakeBackend(device_options);
  if (!device.ok()) {
    return absl::Status(device.status().code(),
                        absl::StrCat("--device ", options.device, ": ", device.status().message()));
  }
  w->device_ = device->info;
  w->device_note_ = device->note;
  spdlog::info("event=device device={} note={}", runtime::LogValue(w->device_.Describe()),
               runtime::LogValue(w->device_note_));
  auto engine = Engine::Create(m, std::move(device->backend), engine_options);
  if (!engine.ok()) return engine.status();
  *pool = &(*engine)->kv_cache();
  auto scheduler =
      Scheduler::Create(std::move(*engine), *w->tokenizer_, options.scheduler, metrics);
  if (!scheduler.ok()) return scheduler.status();
  w->scheduler_ = std::move(*scheduler);
  if (metrics != nullptr) {
    metrics->SetModelInfo({{"model", m.config().name},
                           {"fingerprint", m.fingerprint()},
                           {"backend", w->scheduler_->backend_name()},
                           {"device", w->device_.Describe()},
                           {"block_tokens", std::to_string(w->scheduler_->block_tokens())},
                           {"kv_blocks", std::to_string(w->scheduler_->total_blocks())}});
  }

  std::shared_ptr<const SharingStrategy> strategy;
  if (options.strategy_path.empty()) {
    strategy = std::make_shared<const SharingStrategy>(
        SharingStrategy::Identity(m.config().n_layers, m.fingerprint()));
  } else {
    auto read = SharingStrategy::ReadFile(options.strategy_path);
    if (!read.ok()) {
      return absl::Status(read.status().code(), absl::StrCat("--strategy ", options.strategy_path,
                                                             ": ", read.status().message()));
    }
    strategy = std::make_shared<const SharingStrategy>(std::move(*read));
  }
  absl::Status s = w->strategies_->Publish(options.strategy_version, std::move(strategy));
  if (!s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("--strategy ", options.strategy_path, ": ", s.message()));
  }
  return w;
}

InferenceWorker::~InferenceWorker() { scheduler_.reset(); }

}  // namespace kvshare
