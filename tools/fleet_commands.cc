// kvshare rollout create|status|pause|resume|promote|abort|list and kvshare fleet status|pin|
// unpin: the search service's Rollouts API (kvshare.v1.Rollouts) from the command line.
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "kvshare/v1/registry.grpc.pb.h"
#include "proto/wire/rollout_wire.h"
#include "tools/client_flags.h"
#include "tools/commands.h"
#include "tools/rpc_failure.h"

namespace kvshare::cli {
namespace {

std::unique_ptr<v1::Rollouts::Stub> Stub(const std::string& server) {
  return v1::Rollouts::NewStub(grpc::CreateChannel(server, grpc::InsecureChannelCredentials()));
}

std::unique_ptr<grpc::ClientContext> Context(double seconds) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(DeadlineAfter(seconds));
  return c;
}

int RpcFail(const std::string& server, const grpc::Status& status, double timeout_s) {
  return ReportRpcFailure(server, v1::Rollouts::service_full_name(), status, timeout_s);
}

void PrintRollout(const v1::Rollout& r) {
  std::vector<std::string> steps;
  for (int i = 0; i < r.steps_size(); ++i) {
    steps.push_back(i == static_cast<int>(r.current_step()) ? absl::StrFormat("[%d%%]", r.steps(i))
                                                            : absl::StrFormat("%d%%", r.steps(i)));
  }
  std::cout << absl::StrFormat(
      "rollout   %s  %s%s\n"
      "model     %s (%s)\n"
      "versions  %d -> %d\n"
      "steps     %s  (step %d of %d)\n"
      "workers   %d eligible, %d selected, %d on the target%s\n",
      r.rollout_id(), RolloutStateName(r.state()),
      r.state_reason().empty() ? "" : absl::StrFormat(": %s", r.state_reason()),
      r.model_name().empty() ? "-" : r.model_name(), r.model_fingerprint().substr(0, 16),
      r.from_version(), r.target_version(), absl::StrJoin(steps, " "), r.current_step() + 1,
      r.steps_size(), r.eligible_workers(), r.selected_workers_size(), r.acked_workers(),
      r.label_selector().empty() ? "" : absl::StrFormat(" (selector %s)", r.label_selector()));
  if (r.quality_budget_pct() > 0 || r.allow_quality_regression() || r.has_target_quality()) {
    const v1::StrategyQuality& q = r.target_quality();
    std::cout << absl::StrFormat(
        "quality   %s, budget %.2f%%%s%s\n",
        r.has_target_quality() && q.baseline_ppl() > 0
            ? absl::StrFormat("held-out ppl %.3f -> %.3f (%+.2f%%)", q.baseline_ppl(),
                              q.heldout_ppl(), (q.heldout_ppl() / q.baseline_ppl() - 1) * 100)
            : std::string("no held-out quality recorded"),
        r.quality_budget_pct(), r.allow_quality_regression() ? ", regression allowed" : "",
        r.has_target_probe()
            ? absl::StrFormat(", probe %.4f nats/token", r.target_probe().mean_nll())
            : "");
  }
}

std::string Ago(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0) return "-";
  const absl::Duration d =
      absl::Now() - (absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos()));
  return absl::StrFormat("%.1fs ago", absl::ToDoubleSeconds(d));
}

void PrintFleet(const v1::FleetStatus& f) {
  std::cout << absl::StrFormat("%-14s %-21s %-4s %-8s %-8s %-7s %-9s %-9s %-44s %-11s %-7s %s\n",
                               "WORKER", "ADDRESS", "UP", "VERSION", "ASSIGNED", "OWNING", "PPL +%",
                               "KV B/TOK", "LAST ACK/NACK", "LAST SEEN", "RUN/Q", "KV BLOCKS");
  for (const v1::WorkerStatus& w : f.workers()) {
    std::string ack = "-";
    if (w.last_ack().version() != 0 || w.last_ack().applied() || !w.last_ack().error().empty()) {
      ack = w.last_ack().applied()
                ? absl::StrFormat("ACK v%d", w.last_ack().version())
                : absl::StrFormat("NACK v%d %s: %s", w.last_ack().version(),
                                  v1::NackReason_Name(w.last_ack().reason()).substr(12),
                                  w.last_ack().error());
      if (ack.size() > 44) ack = ack.substr(0, 41) + "...";
    }
    std::cout << absl::StrFormat(
        "%-14s %-21s %-4s %-8d %-8s %-7s %-9s %-9s %-44s %-11s %-7s %d/%d\n", w.worker_id(),
        w.address(), w.connected() ? "yes" : "no", w.current_version(),
        w.has_assignment() ? absl::StrFormat("%d", w.assigned_version()) : "-",
        w.n_layers() > 0 ? absl::StrFormat("%d/%d", w.owning_layers(), w.n_layers()) : "-",
        w.has_quality() ? absl::StrFormat("%.2f", w.ppl_increase_pct()) : "-",
        w.kv_bytes_per_token() > 0 ? absl::StrFormat("%.0f", w.kv_bytes_per_token()) : "-", ack,
        Ago(w.last_seen()), absl::StrFormat("%d/%d", w.load().running(), w.load().queued()),
        w.load().kv_blocks_used(), w.load().kv_blocks_total());
  }
  for (const v1::Rollout& r : f.active_rollouts()) {
    std::cout << "\n";
    PrintRollout(r);
  }
}

}  // namespace

Runner RegisterRollout(CLI::App& app) {
  struct Flags {
    std::string server;
    double timeout = 30;
    std::string model;
    uint64_t version = 0;
    std::vector<uint32_t> steps;
    std::string selector;
    std::string id;
    bool watch = false;
    bool allow_quality_regression = false;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand(
      "rollout", "Roll a strategy version out across the worker fleet (kvshare-search)");
  sub->require_subcommand(1);
  auto common = [&](CLI::App* c) {
    AddServerFlag(c, &f->server, ServerKind::kSearch);
    AddTimeoutFlag(c, &f->timeout, "Seconds to wait for each call (--watch: for none)");
    AddJsonFlag(c, &f->json,
                "Print the rollout (list: ListRolloutsResponse) as one line of JSON, field names "
                "as in kvshare/v1/*.proto; --watch: one line per change");
  };
  CLI::App* create = sub->add_subcommand("create", "Start a rollout");
  common(create);
  create->add_option("--model", f->model, "Model fingerprint or name")->required();
  create->add_option("--version", f->version, "Target version")->required();
  create
      ->add_option("--steps", f->steps,
                   "Percent of the eligible workers after each step, e.g. 10,50,100 "
                   "(default 100)")
      ->delimiter(',');
  create->add_option("--selector", f->selector,
                     "key=value[,key=value]: only workers with these labels (default: workers "
                     "running the model)");
  create->add_flag("--allow-quality-regression", f->allow_quality_regression,
                   "Roll out a version past the model's quality budget (catalog "
                   "max_ppl_increase_pct) or with no recorded quality; the rollout records it");
  std::vector<CLI::App*> by_id;
  for (auto [name, help] : std::vector<std::pair<const char*, const char*>>{
           {"status", "Show a rollout (--watch: follow it until it ends)"},
           {"pause", "Stop moving workers and advancing steps"},
           {"resume", "Resume a paused rollout"},
           {"promote", "Jump to 100% (still gated on ACKs)"},
           {"abort", "End it; the workers it moved go back to the previous version"}}) {
    CLI::App* c = sub->add_subcommand(name, help);
    common(c);
    c->add_option("id", f->id, "Rollout id (e.g. r3)")->required();
    by_id.push_back(c);
  }
  by_id[0]->add_flag("--watch", f->watch, "Print each change until the rollout ends");
  CLI::App* list = sub->add_subcommand("list", "List every rollout");
  common(list);

  return [f, create, by_id, list]() -> int {
    auto stub = Stub(f->server);
    v1::Rollout r;
    grpc::Status s;
    if (create->parsed()) {
      v1::CreateRolloutRequest req;
      req.set_model(f->model);
      req.set_target_version(f->version);
      for (uint32_t step : f->steps) req.add_steps(step);
      req.set_label_selector(f->selector);
      req.set_allow_quality_regression(f->allow_quality_regression);
      s = stub->CreateRollout(Context(f->timeout).get(), req, &r);
    } else if (list->parsed()) {
      v1::ListRolloutsResponse out;
      s = stub->ListRollouts(Context(f->timeout).get(), v1::ListRolloutsRequest(), &out);
      if (!s.ok()) return RpcFail(f->server, s, f->timeout);
      if (f->json) {
        std::cout << ToJsonLine(out) << "\n";
        return 0;
      }
      for (const v1::Rollout& one : out.rollouts()) {
        PrintRollout(one);
        std::cout << "\n";
      }
      return 0;
    } else {
      v1::RolloutRef ref;
      ref.set_rollout_id(f->id);
      if (by_id[0]->parsed() && f->watch) {
        grpc::ClientContext ctx;
        auto reader = stub->WatchRollout(&ctx, ref);
        while (reader->Read(&r)) {
          if (f->json) {
            std::cout << ToJsonLine(r) << "\n";  // JSON Lines: one object per change
          } else {
            std::cout << absl::FormatTime("-- %H:%M:%S\n", absl::Now(), absl::LocalTimeZone());
            PrintRollout(r);
          }
          std::cout.flush();
        }
        s = reader->Finish();
        return s.ok() ? 0 : RpcFail(f->server, s, 0);
      }
      auto ctx = Context(f->timeout);
      if (by_id[0]->parsed()) s = stub->GetRollout(ctx.get(), ref, &r);
      if (by_id[1]->parsed()) s = stub->PauseRollout(ctx.get(), ref, &r);
      if (by_id[2]->parsed()) s = stub->ResumeRollout(ctx.get(), ref, &r);
      if (by_id[3]->parsed()) s = stub->PromoteRollout(ctx.get(), ref, &r);
      if (by_id[4]->parsed()) s = stub->AbortRollout(ctx.get(), ref, &r);
    }
    if (!s.ok()) return RpcFail(f->server, s, f->timeout);
    if (f->json) {
      std::cout << ToJsonLine(r) << "\n";
    } else {
      PrintRollout(r);
    }
    return 0;
  };
}

Runner RegisterFleet(CLI::App& app) {
  struct Flags {
    std::string server;
    double timeout = 30;
    std::string worker, label, model;
    uint64_t version = 0;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  CLI::App* sub =
      app.add_subcommand("fleet", "The worker fleet as the search service sees it; operator pins");
  sub->require_subcommand(1);
  auto common = [&](CLI::App* c) {
    AddServerFlag(c, &f->server, ServerKind::kSearch);
    AddTimeoutFlag(c, &f->timeout, "Seconds to wait for the call");
  };
  CLI::App* status = sub->add_subcommand(
      "status", "Every worker: version, assignment, last ACK/NACK, last seen, load");
  common(status);
  AddJsonFlag(status, &f->json);
  CLI::App* pin = sub->add_subcommand("pin", "Pin a worker or a label to a version");
  common(pin);
  CLI::App* unpin = sub->add_subcommand("unpin", "Remove a pin");
  common(unpin);
  for (CLI::App* c : {pin, unpin}) {
    auto* w = c->add_option("--worker", f->worker, "Worker id");
    c->add_option("--label", f->label, "key=value")->excludes(w);
  }
  pin->add_option("--model", f->model, "Model fingerprint or name")->required();
  pin->add_option("--version", f->version, "Version (0 = identity)")->required();

  return [f, status, pin, unpin]() -> int {
    auto stub = Stub(f->server);
    auto ctx = Context(f->timeout);
    if (status->parsed()) {
      v1::FleetStatus fleet;
      grpc::Status s = stub->GetFleetStatus(ctx.get(), v1::GetFleetStatusRequest(), &fleet);
      if (!s.ok()) return RpcFail(f->server, s, f->timeout);
      if (f->json) {
        std::cout << ToJsonLine(fleet) << "\n";
      } else {
        PrintFleet(fleet);
      }
      return 0;
    }
    if (f->worker.empty() && f->label.empty()) {
      std::cerr << "error: give --worker or --label\n";
      return 2;
    }
    v1::Pin p;
    if (!f->worker.empty())
      p.set_worker_id(f->worker);
    else
      p.set_label(f->label);
    p.set_model(f->model);
    p.set_version(f->version);
    if (pin->parsed()) {
      v1::Pin out;
      grpc::Status s = stub->SetPin(ctx.get(), p, &out);
      if (!s.ok()) return RpcFail(f->server, s, f->timeout);
      std::cout << "pinned "
                << (out.has_worker_id() ? "worker " + out.worker_id() : "label " + out.label())
                << " to version " << out.version() << "\n";
      return 0;
    }
    (void)unpin;
    v1::ListPinsResponse left;
    grpc::Status s = stub->ClearPin(ctx.get(), p, &left);
    if (!s.ok()) return RpcFail(f->server, s, f->timeout);
    std::cout << left.pins_size() << " pins left\n";
    return 0;
  };
}

}  // namespace kvshare::cli
