// kvshare generate --server HOST:PORT ...   stream a completion from a kvshare-worker
// kvshare load --server HOST:PORT --concurrency C --requests N   a small load generator
#include <cstdio>
#include <iostream>
#include <memory>

#include "absl/strings/str_format.h"
#include "grpcpp/grpcpp.h"
#include "inference_service/load_generator.h"
#include "kvshare/v1/inference.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tools/client_flags.h"
#include "tools/commands.h"
#include "tools/rpc_failure.h"
#include "tools/worker_client.h"

namespace kvshare::cli {
namespace {

std::shared_ptr<grpc::Channel> Connect(const std::string& server) {
  return grpc::CreateChannel(server, grpc::InsecureChannelCredentials());
}

int FailRpc(const std::string& server, const grpc::Status& status, double timeout_s) {
  return ReportRpcFailure(server, v1::InferenceService::service_full_name(), status, timeout_s);
}

const char* FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_EOS:
      return "eos";
    case v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    default:
      return "unspecified";
  }
}

std::string Ms(double seconds) { return absl::StrFormat("%8.1f", seconds * 1000); }

}  // namespace

v1::GenerateRequest ToRequest(const RemoteGenerateFlags& f) {
  v1::GenerateRequest r;
  if (f.chat) {
    if (!f.system.empty()) {
      auto* m = r.mutable_chat()->add_messages();
      m->set_role("system");
      m->set_content(f.system);
    }
    auto* m = r.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(f.prompt);
  } else {
    r.set_text(f.prompt);
  }
  r.set_max_tokens(f.gen.max_tokens);
  r.set_temperature(f.gen.sampling.temperature);
  r.set_top_k(f.gen.sampling.top_k);
  r.set_top_p(f.gen.sampling.top_p);
  r.set_seed(f.gen.sampling.seed);
  for (const std::string& s : f.gen.stop) r.add_stop(s);
  if (f.strategy_version >= 0) r.set_strategy_version(uint64_t(f.strategy_version));
  r.set_ignore_eos(f.ignore_eos);
  return r;
}

grpc::Status StreamGenerate(const std::string& server, const v1::GenerateRequest& request,
                            double timeout_s,
                            const std::function<void(const std::string&)>& on_text,
                            RemoteGeneration* out) {
  auto stub = v1::InferenceService::NewStub(Connect(server));
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineAfter(timeout_s));
  auto reader = stub->Generate(&ctx, request);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_start()) {
      out->start = msg.start();
    } else if (msg.has_chunk()) {
      out->text += msg.chunk().text();
      on_text(msg.chunk().text());
    } else if (msg.has_end()) {
      out->end = msg.end();
    }
  }
  return reader->Finish();
}

std::string RemoteStatsLine(const RemoteGeneration& g, const std::string& server) {
  const v1::Timings& t = g.end.timings();
  const int n = g.end.usage().completion_tokens();
  return absl::StrFormat(
      "[%d prompt tokens; %d generated; queue %.3f s, first token %.3f s, decode %.1f tok/s; "
      "finish: %s; strategy %s v%d; request %s @ %s]",
      g.start.prompt_tokens(), n, t.queue_seconds(), t.time_to_first_token_seconds(),
      n > 1 && t.decode_seconds() > 0 ? (n - 1) / t.decode_seconds() : 0.0,
      FinishName(g.end.finish_reason()), g.start.strategy_id().substr(0, 12),
      g.start.strategy_version(), g.start.request_id(), server);
}

int RunRemoteGenerate(const RemoteGenerateFlags& flags) {
  bool echoed = flags.chat || flags.no_echo;
  RemoteGeneration g;
  const grpc::Status status = StreamGenerate(
      flags.server, ToRequest(flags), flags.timeout_s,
      [&](const std::string& text) {
        if (!echoed) {
          std::fputs(flags.prompt.c_str(), stdout);
          echoed = true;
        }
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
      },
      &g);
  std::fputc('\n', stdout);
  if (!status.ok()) return FailRpc(flags.server, status, flags.timeout_s);
  std::cerr << RemoteStatsLine(g, flags.server) << "\n";
  return 0;
}

Runner RegisterLoad(CLI::App& app) {
  struct Flags {
    RemoteGenerateFlags request;
    int concurrency = 4;
    int requests = 16;
    double timeout = 600;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  f->request.prompt = "Once upon a time";
  f->request.gen.max_tokens = 64;
  CLI::App* sub = app.add_subcommand(
      "load", "Load a kvshare-worker: throughput and latency percentiles (TTFT, inter-token)");
  AddServerFlag(sub, &f->request.server, ServerKind::kWorker);
  sub->add_option("--concurrency", f->concurrency, "Streams in flight at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  sub->add_option("--requests", f->requests, "Requests in all")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  sub->add_option("--prompt", f->request.prompt, "Prompt text")->capture_default_str();
  sub->add_flag("--chat", f->request.chat, "Send the prompt as a chat user message");
  sub->add_option("--system", f->request.system, "System message for --chat");
  sub->add_option("--max-tokens", f->request.gen.max_tokens, "Tokens per request")
      ->capture_default_str();
  sub->add_option("--temperature", f->request.gen.sampling.temperature, "0 = greedy")
      ->capture_default_str();
  sub->add_option("--top-k", f->request.gen.sampling.top_k,
                  "Keep the k most likely tokens (0 = all)")
      ->capture_default_str();
  sub->add_option("--top-p", f->request.gen.sampling.top_p, "Nucleus mass in (0, 1]")
      ->capture_default_str();
  sub->add_option("--seed", f->request.gen.sampling.seed, "Seed of request 0 (request i: +i)")
      ->capture_default_str();
  sub->add_option("--stop", f->request.gen.stop, "Stop string (repeatable)");
  sub->add_option("--strategy-version", f->request.strategy_version,
                  "Pin this strategy version (default: the worker's current)");
  sub->add_flag("--ignore-eos", f->request.ignore_eos,
                "Generate exactly --max-tokens per request (a fixed amount of work)");
  AddTimeoutFlag(sub, &f->timeout, "Seconds to wait for each request");
  AddJsonFlag(sub, &f->json, "Print the report as JSON");

  return [f]() -> int {
    auto channel = Connect(f->request.server);
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(DeadlineAfter(f->timeout));
      v1::GetModelInfoResponse info;
      grpc::Status s = v1::InferenceService::NewStub(channel)->GetModelInfo(
          &ctx, v1::GetModelInfoRequest(), &info);
      if (!s.ok()) return FailRpc(f->request.server, s, f->timeout);
      if (!f->json) {
        int owning = 0;
        for (int l = 0; l < info.strategy().kv_source_size(); ++l) {
          owning += info.strategy().kv_source(l) == l;
        }
        std::cout << absl::StrFormat(
            "kvshare load: %d requests, concurrency %d, %d max tokens -> %s (%s, strategy v%d: "
            "%d of %d layers own KV, %d tokens of KV capacity)\n",
            f->requests, f->concurrency, f->request.gen.max_tokens, f->request.server,
            info.config().name(), info.strategy_version(), owning, info.config().n_layers(),
            info.capacity_tokens());
      }
    }
    LoadOptions options;
    options.concurrency = f->concurrency;
    options.requests = f->requests;
    options.timeout_seconds = f->timeout;
    const RemoteGenerateFlags base = f->request;
    options.make_request = [base](int i) {
      RemoteGenerateFlags r = base;
      r.gen.sampling.seed += uint64_t(i);
      return ToRequest(r);
    };
    const LoadReport rep = RunLoad(channel, options);
    if (f->json) {
      auto lat = [](const LatencySummary& s) {
        return nlohmann::json{{"count", s.count}, {"mean_s", s.mean}, {"p50_s", s.p50},
                              {"p90_s", s.p90},   {"p99_s", s.p99},   {"max_s", s.max}};
      };
      nlohmann::json j = {{"server", f->request.server},
                          {"concurrency", rep.concurrency},
                          {"requests", rep.requests},
                          {"ok", rep.ok},
                          {"errors", rep.errors},
                          {"prompt_tokens", rep.prompt_tokens},
                          {"completion_tokens", rep.completion_tokens},
                          {"wall_s", rep.wall_seconds},
                          {"tokens_per_s", rep.tokens_per_second()},
                          {"requests_per_s", rep.requests_per_second()},
                          {"ttft", lat(rep.ttft)},
                          {"inter_token", lat(rep.inter_token)},
                          {"e2e", lat(rep.e2e)},
                          {"queue", lat(rep.queue)}};
      std::cout << j.dump(2) << "\n";
    } else {
      std::string errors;
      for (const auto& [code, n] : rep.errors) errors += absl::StrFormat(" %s=%d", code, n);
      std::cout << absl::StrFormat(
          "ok %d of %d, errors:%s\nwall %.2f s   output %.1f tok/s   %.2f req/s   (%d prompt + "
          "%d generated tokens)\n\n",
          rep.ok, rep.requests, errors.empty() ? " none" : errors, rep.wall_seconds,
          rep.tokens_per_second(), rep.requests_per_second(), rep.prompt_tokens,
          rep.completion_tokens);
      std::cout << "latency (ms)          p50       p90       p99       max     count\n";
      for (const auto& [name, s] :
           std::vector<std::pair<const char*, LatencySummary>>{{"time to first token", rep.ttft},
                                                               {"inter-token", rep.inter_token},
                                                               {"end to end", rep.e2e},
                                                               {"queue (worker)", rep.queue}}) {
        std::cout << absl::StrFormat("%-19s %s  %s  %s  %s  %8d\n", name, Ms(s.p50), Ms(s.p90),
                                     Ms(s.p99), Ms(s.max), s.count);
      }
    }
    return rep.ok == rep.requests ? 0 : 1;
  };
}

}  // namespace kvshare::cli
