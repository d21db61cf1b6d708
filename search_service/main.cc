// kvshare-search: the search service (docs/ARCHITECTURE.md): KVSharer search jobs and the versioned
// strategy registry over gRPC.
//
//   kvshare-search --data-dir /var/lib/kvshare [--catalog catalog.json] [--port 50061]
//                  [--metrics-port 9465 --metrics-host 127.0.0.1]
//
// Start-up: open the registry store and the job records (jobs the previous process left
// unfinished are reported FAILED), listen, health SERVING. SIGTERM or SIGINT: drain — health
// NOT_SERVING, no new jobs, queued and running jobs get --drain-grace seconds, the rest end
// FAILED with the reason — then exit 0.
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "search_service/server/search_metrics.h"
#include "search_service/server/search_server.h"
#include "service_runtime/log_value.h"
#include "service_runtime/metrics_exposer.h"
#include "service_runtime/port_file.h"
#include "service_runtime/service_flags.h"
#include "service_runtime/service_logging.h"
#include "service_runtime/shutdown_signal.h"
#include "spdlog/spdlog.h"

namespace {

struct Flags {
  kvshare::SearchServerOptions server;
  std::string host = "0.0.0.0";
  int port = 50061;
  std::string port_file;
  int metrics_port = 9465;
  std::string metrics_host = "127.0.0.1";
  double drain_grace_s = 30;
  std::string log_level = "info";
  std::string log_format = "logfmt";
};

int Fail(const std::string& what) {
  spdlog::critical("event=startup_failed error={}", kvshare::runtime::LogValue(what));
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // First: SIGTERM/SIGINT from here on start the drain, whichever thread takes them.
  kvshare::runtime::ShutdownSignal shutdown_signal;

  Flags f;
  kvshare::SearchJobRunnerOptions& jobs = f.server.jobs;
  CLI::App app{
      "kvshare-search: serves kvshare.v1.SearchService (KVSharer strategy search jobs) "
      "and kvshare.v1.StrategyRegistry (versioned, immutable strategies) over gRPC"};
  app.add_option("--host", f.host, "Address to listen on")->capture_default_str();
  app.add_option("--port", f.port, "gRPC port (0 = any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--port-file", f.port_file,
                 "Write the gRPC port here once listening (useful with --port 0)");
  app.add_option("--data-dir", f.server.data_dir,
                 "Directory of the strategy registry (strategies/) and job records (jobs/); "
                 "created if missing, one service per directory")
      ->required();
  app.add_option("--store", f.server.store,
                 "Where the strategy registry and the fleet state (rollouts, pins, baselines) "
                 "live: empty = under --data-dir (one process); "
                 "etcd://HOST:PORT[,HOST:PORT...]/PREFIX = etcd, shared by several replicas");
  app.add_option("--catalog", f.server.catalog_path,
                 "Model catalog JSON (models and calibration corpora by name; see "
                 "search_service/catalog.example.json). Default: SmolLM2-135M-Instruct and "
                 "stories260K; WikiText-2, TinyStories, Tiny Shakespeare");
  app.add_option("--max-concurrent-jobs", jobs.max_concurrent_jobs, "Searches running at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--max-queued-jobs", jobs.max_queued_jobs,
                 "Jobs waiting to run; beyond it CreateSearchJob answers RESOURCE_EXHAUSTED")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000));
  app.add_option("--search-threads", jobs.search_threads,
                 "CPU threads per running search (0 = cores / --max-concurrent-jobs)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  app.add_option("--metrics-port", f.metrics_port, "Prometheus /metrics port (0 = off)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--metrics-host", f.metrics_host,
                 "Address /metrics listens on (0.0.0.0 to let other hosts scrape it)")
      ->capture_default_str();
  app.add_option("--drain-grace", f.drain_grace_s,
                 "Seconds queued and running jobs get to finish after SIGTERM")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  kvshare::runtime::AddLogLevelFlag(app, &f.log_level);
  kvshare::runtime::AddLogFormatFlag(app, &f.log_format);
  kvshare::runtime::AddVersionFlag(app, "kvshare-search");
  double worker_expiry_s = 30;
  app.add_option("--worker-expiry", worker_expiry_s,
                 "Seconds a selected worker may be away (disconnected, or not back since this "
                 "process started) before it stops holding a rollout step up")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  double leader_ttl_s = 5;
  app.add_option("--leader-ttl", leader_ttl_s,
                 "With an etcd --store: seconds of the leader's lease; a dead leader's rollouts "
                 "resume on another replica within it")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 600.0));
  app.add_option("--advertise-address", f.server.advertise_address,
                 "With an etcd --store: host:port where clients reach this replica (default "
                 "<hostname>:<port>); a replica that is not the leader names the leader by it "
                 "when it refuses a rollout or pin command");
  CLI11_PARSE(app, argc, argv);
  f.server.leader_ttl = absl::Seconds(leader_ttl_s);
  f.server.fleet.worker_expiry = absl::Seconds(worker_expiry_s);

  absl::Status s =
      kvshare::runtime::SetUpServiceLogging("kvshare-search", f.log_level, f.log_format);
  if (!s.ok()) return Fail(std::string(s.message()));

  kvshare::SearchMetrics metrics;
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

  f.server.address = absl::StrFormat("%s:%d", f.host, f.port);
  auto server = kvshare::SearchServer::Start(f.server, &metrics);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  spdlog::info(
      "event=ready address={}:{} data_dir={} store={} catalog_models={} max_concurrent_jobs={} "
      "max_queued_jobs={} metrics={}:{} health=SERVING",
      f.host, (*server)->port(), f.server.data_dir,
      kvshare::runtime::LogValue(f.server.store.empty() ? "directory" : f.server.store),
      (*server)->catalog().model_names().size(), jobs.max_concurrent_jobs, jobs.max_queued_jobs,
      f.metrics_host, f.metrics_port);
  if (!f.port_file.empty()) {
    s = kvshare::runtime::WritePortFile(f.port_file, (*server)->port());
    if (!s.ok()) return Fail(absl::StrFormat("--port-file: %s", s.message()));
  }

  const int signal = shutdown_signal.Wait();
  spdlog::info("event=signal signal={} action=drain",
               kvshare::runtime::ShutdownSignal::Name(signal));
  const bool clean = (*server)->Drain(absl::Seconds(f.drain_grace_s));
  server->reset();
  spdlog::info("event=exit clean_drain={}", clean);
  return 0;
}
