// Control-plane write latency: the directory store (files, fsync) against etcd with 1 and 3
// members on loopback (started here in temporary directories), for the writes the control
// plane makes — publishing a strategy version, saving the fleet state (every pin or operator
// command is one such save) — and a rollout step as the leader takes it: a worker's ACK
// completes the step, the policy selects the next worker, the state is saved and the next
// assignment sent (RolloutController::Ack, timed end to end, with fake worker streams).
//
//   build/bench/store_bench [--n 200] [--clients 4] [--dir /tmp] [--members 1,3] [--json FILE]
//
// All stores write under --dir (put it on the disk you would deploy on: fsync cost is the
// disk's). etcd comes from $KVSHARE_ETCD or PATH; without it only the directory rows print.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "search_service/server/directory_strategy_store.h"
#include "search_service/server/etcd_fleet_state.h"
#include "search_service/server/etcd_strategy_store.h"
#include "search_service/server/fleet_state_store.h"
#include "search_service/server/rollout_controller.h"
#include "spdlog/spdlog.h"
#include "tests/support/etcd_process.h"

namespace kvshare {
namespace {

constexpr int kLayers = 30;

// Distinct strategies: number k shares the k-th layer pair (i, j), j < i.
std::shared_ptr<const SharingStrategy> NthStrategy(int k, const std::string& fingerprint) {
  std::vector<int> kv_source(kLayers);
  for (int l = 0; l < kLayers; ++l) kv_source[l] = l;
  for (int i = 1; i < kLayers; ++i) {
    for (int j = 0; j < i; ++j) {
      if (k-- == 0) {
        kv_source[i] = j;
        return std::make_shared<const SharingStrategy>(
            *SharingStrategy::Create(kv_source, fingerprint));
      }
    }
  }
  return nullptr;
}

struct Row {
  std::string store, op;
  int clients = 1;
  std::vector<double> ms;  // one per operation
  double wall_s = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * (v.size() - 1) + 0.5))];
}

// Runs `op(client, i)` n times split over `clients` threads; each call timed.
Row Measure(const std::string& store, const std::string& op_name, int n, int clients,
            const std::function<void(int client, int i)>& op) {
  Row row{store, op_name, clients, {}, 0};
  std::vector<std::vector<double>> per(clients);
  const double start = bench::Now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      for (int i = c; i < n; i += clients) {
        const double t0 = bench::Now();
        op(c, i);
        per[c].push_back((bench::Now() - t0) * 1e3);
      }
    });
  }
  for (auto& t : threads) t.join();
  row.wall_s = bench::Now() - start;
  for (auto& v : per) row.ms.insert(row.ms.end(), v.begin(), v.end());
  return row;
}

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(s.message()).c_str());
    std::exit(1);
  }
}

// The rows of one store: publishes from 1 and `clients` clients, fleet-state saves.
void RunStore(const std::string& name, StrategyStore& store, FleetStateStore& fleet, int n,
              int clients, std::vector<Row>* rows) {
  const std::string fp1(64, 'a'), fp2(64, 'b');
  rows->push_back(Measure(name, "publish", n, 1, [&](int, int i) {
    Check(store.Publish(NthStrategy(i, fp1), {"bench", ""}).status(), "publish");
  }));
  rows->push_back(Measure(name, "publish", n, clients, [&](int, int i) {
    Check(store.Publish(NthStrategy(i, fp2), {"bench", ""}).status(), "publish");
  }));
  auto state = fleet.Read([](const std::string&, uint64_t) { return true; });
  Check(state.status(), "read fleet state");
  rows->push_back(Measure(name, "fleet state save", n, 1, [&](int, int i) {
    v1::Pin* pin = state->pins_size() > 0 ? state->mutable_pins(0) : state->add_pins();
    pin->set_worker_id("w1");
    pin->set_model(fp1);
    pin->set_version(1 + i % 2);
    Check(fleet.Write(&*state), "save fleet state");
  }));
}

// A worker's end of a strategy stream, for the bench: keeps the assignments not yet ACKed.
class BenchChannel : public WorkerChannel {
 public:
  void Send(const v1::StrategyAssignment& a) override {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(a);
  }
  std::vector<v1::StrategyAssignment> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(pending_, {});
  }

 private:
  std::mutex mu_;
  std::vector<v1::StrategyAssignment> pending_;
};

// `n` rollout steps: rollouts in 10 steps of one worker each over 10 fake workers, back and
// forth between two versions; each sample is the Ack() that completes a step (the policy
// advances, the state is saved to `fleet`, the next worker's assignment is sent).
Row RolloutSteps(const std::string& name, StrategyStore& store,
                 std::unique_ptr<FleetStateStore> fleet, int n) {
  constexpr int kWorkers = 10;
  const std::string fp(64, 'c');
  uint64_t versions[2];
  for (int k = 0; k < 2; ++k) {
    auto r = store.Publish(NthStrategy(k, fp), {"bench", ""});
    Check(r.status(), "publish");
    versions[k] = r->record.version;
  }
  auto controller = RolloutController::Open(RolloutControllerOptions{}, &store, std::move(fleet));
  Check(controller.status(), "open rollout controller");
  std::vector<std::unique_ptr<BenchChannel>> channels;
  for (int w = 0; w < kWorkers; ++w) {
    channels.push_back(std::make_unique<BenchChannel>());
    v1::WorkerHello hello;
    hello.set_worker_id(absl::StrFormat("w-%d", w));
    hello.set_model_fingerprint(fp);
    (*controller)->Hello(channels.back().get(), hello);
  }
  std::vector<uint32_t> steps;
  for (int k = 1; k <= kWorkers; ++k) steps.push_back(uint32_t(100 * k / kWorkers));
  Row row{name, "rollout step", 1, {}, 0};
  const double start = bench::Now();
  for (int round = 0; int(row.ms.size()) < n; ++round) {
    const uint64_t target = versions[round % 2];
    auto rollout = (*controller)->CreateRollout(fp, "bench", target, steps, "");
    Check(rollout.status(), "create rollout");
    for (bool acked = true; acked;) {
      acked = false;
      for (auto& channel : channels) {
        for (const v1::StrategyAssignment& a : channel->Take()) {
          v1::StrategyAck ack;
          ack.set_version(a.version());
          ack.set_strategy_id(a.strategy().id());
          ack.set_applied(true);
          const double t0 = bench::Now();
          (*controller)->Ack(channel.get(), ack);
          if (a.version() == target) row.ms.push_back((bench::Now() - t0) * 1e3);
          acked = true;
        }
      }
    }
    auto done = (*controller)->GetRollout(rollout->rollout_id());
    if (!done.ok() || done->state() != v1::ROLLOUT_COMPLETED) {
      std::fprintf(stderr, "rollout %s did not complete\n", rollout->rollout_id().c_str());
      std::exit(1);
    }
  }
  row.wall_s = bench::Now() - start;
  return row;
}

}  // namespace
}  // namespace kvshare

int main(int argc, char** argv) {
  int n = 200, clients = 4;
  std::string dir = "/tmp", json_path;
  CLI::App app{"store_bench: publish and fleet-state save latency, directory store vs etcd"};
  app.add_option("--n", n, "Operations per row")->capture_default_str()->check(CLI::Range(1, 400));
  app.add_option("--clients", clients, "Concurrent publishers in the second publish row")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--dir", dir, "Where both stores write")->capture_default_str();
  app.add_option("--json", json_path, "Also write the rows as JSON here");
  std::vector<int> members = {1, 3};
  app.add_option("--members", members, "etcd cluster sizes to measure")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(1, 5));
  CLI11_PARSE(app, argc, argv);

  using namespace kvshare;
  spdlog::set_level(spdlog::level::warn);  // the controller logs every step
  std::vector<Row> rows;
  const std::string root = absl::StrFormat("%s/store_bench.%d", dir, getpid());
  std::filesystem::remove_all(root);
  {
    auto store = DirectoryStrategyStore::Open(root + "/strategies");
    Check(store.status(), "open directory store");
    auto fleet = DirectoryFleetState::Open(root + "/fleet");
    Check(fleet.status(), "open directory fleet state");
    RunStore("directory", **store, **fleet, n, clients, &rows);
    auto rollout_fleet = DirectoryFleetState::Open(root + "/fleet-rollouts");
    Check(rollout_fleet.status(), "open directory fleet state");
    rows.push_back(RolloutSteps("directory", **store, std::move(*rollout_fleet), n));
  }
  std::string etcd_note = "etcd: members on loopback, data under --dir";
  if (testing::EtcdProcess::Binary().empty()) {
    etcd_note = "etcd: skipped (no etcd binary)";
  } else {
    setenv("TEST_TMPDIR", root.c_str(), 1);
    for (int m : members) {
      auto etcd = testing::EtcdProcess::StartCluster(absl::StrFormat("bench%d", m), m);
      Check(etcd.status(), "start etcd");
      std::vector<std::string> endpoints;
      for (const auto& member : *etcd) endpoints.push_back(member->endpoint());
      auto client = std::make_shared<EtcdClient>(endpoints);
      auto store = EtcdStrategyStore::Open(client, "/bench");
      Check(store.status(), "open etcd store");
      EtcdFleetState fleet(client, "/bench");
      const std::string name = absl::StrFormat("etcd (%d member%s)", m, m == 1 ? "" : "s");
      RunStore(name, **store, fleet, n, clients, &rows);
      rows.push_back(RolloutSteps(name, **store,
                                  std::make_unique<EtcdFleetState>(client, "/bench-rollouts"), n));
    }
  }
  std::filesystem::remove_all(root);

  std::printf("%-16s %-17s %7s %5s %8s %8s %8s %8s %9s\n", "store", "operation", "clients", "n",
              "mean_ms", "p50_ms", "p90_ms", "p99_ms", "ops/s");
  nlohmann::json out = nlohmann::json::array();
  for (const Row& r : rows) {
    double sum = 0;
    for (double m : r.ms) sum += m;
    const double mean = sum / r.ms.size();
    std::printf("%-16s %-17s %7d %5zu %8.2f %8.2f %8.2f %8.2f %9.0f\n", r.store.c_str(),
                r.op.c_str(), r.clients, r.ms.size(), mean, Percentile(r.ms, 0.5),
                Percentile(r.ms, 0.9), Percentile(r.ms, 0.99), r.ms.size() / r.wall_s);
    out.push_back({{"store", r.store},
                   {"operation", r.op},
                   {"clients", r.clients},
                   {"n", r.ms.size()},
                   {"mean_ms", mean},
                   {"p50_ms", Percentile(r.ms, 0.5)},
                   {"p90_ms", Percentile(r.ms, 0.9)},
                   {"p99_ms", Percentile(r.ms, 0.99)},
                   {"ops_per_s", r.ms.size() / r.wall_s}});
  }
  std::printf("(%s; directory: files under --dir, fsync per write)\n", etcd_note.c_str());
  if (!json_path.empty()) bench::WriteJson(json_path, out);
  return 0;
}
