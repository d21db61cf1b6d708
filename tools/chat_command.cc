// kvshare chat: an interactive conversation, one user line at a time from stdin, each reply
// streamed to stdout as it is generated. The whole conversation goes with every turn, in the
// model's chat template (the same template the worker applies to a gRPC chat request and to
// /v1/chat/completions): over a kvshare-worker (--server: gRPC Generate with the messages) or
// in this process (the engine `kvshare generate` runs).
//
// Lines: `/reset` forgets the conversation (the --system message stays), `/quit` or end of
// input ends. After each reply a stats line goes to stderr: "[N prompt tokens; M generated;
// ...]". A failed turn (too long for the context, the worker gone) ends the session with
// exit code 1.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "common/engine/generate.h"
#include "tools/commands.h"
#include "tools/rpc_failure.h"
#include "tools/session.h"
#include "tools/worker_client.h"

namespace kvshare::cli {
namespace {

struct ChatFlags {
  ModelFlags model;
  RemoteGenerateFlags remote;  // server, system, gen (sampling, max_tokens, stop), timeout
};

// One turn: the reply to `messages`, streamed to stdout; the stats line for stderr.
struct Turn {
  std::string reply;
  std::string stats;
};

void Print(const std::string& piece) {
  std::fwrite(piece.data(), 1, piece.size(), stdout);
  std::fflush(stdout);
}

absl::StatusOr<Turn> LocalTurn(const Session& session, const GenerateOptions& options,
                               const std::vector<ChatMessage>& messages) {
  const Tokenizer& tok = *session.tokenizer;
  auto text = tok.ApplyChatTemplate(messages, /*add_generation_prompt=*/true);
  if (!text.ok()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "--model: %s has no chat template (%s); kvshare generate continues plain text",
        session.model->config().name, text.status().message()));
  }
  const std::vector<int32_t> prompt = tok.Encode(*text, /*add_bos=*/false);
  auto result =
      Generate(*session.engine, tok, prompt, options, [](int32_t, const std::string& piece) {
        Print(piece);
        return true;
      });
  if (!result.ok()) return result.status();
  Turn turn;
  turn.reply = result->text;
  const double decode_tps = result->tokens.size() > 1 && result->decode_seconds > 0
                                ? (result->tokens.size() - 1) / result->decode_seconds
                                : 0.0;
  turn.stats = absl::StrFormat(
      "[%d prompt tokens; %d generated; prefill %.3f s, decode %.1f tok/s; finish: %s]",
      prompt.size(), result->tokens.size(), result->prefill_seconds, decode_tps,
      FinishReasonName(result->finish));
  return turn;
}

// The remote turn's failure is reported here (it needs the gRPC status); nullopt then.
std::optional<Turn> RemoteTurn(const RemoteGenerateFlags& flags,
                               const std::vector<ChatMessage>& messages) {
  v1::GenerateRequest request = ToRequest(flags);
  request.mutable_chat()->clear_messages();
  for (const ChatMessage& m : messages) {
    v1::ChatMessage* out = request.mutable_chat()->add_messages();
    out->set_role(m.role);
    out->set_content(m.content);
  }
  RemoteGeneration g;
  const grpc::Status status = StreamGenerate(flags.server, request, flags.timeout_s, Print, &g);
  if (!status.ok()) {
    std::fputc('\n', stdout);
    ReportRpcFailure(flags.server, "kvshare.v1.InferenceService", status, flags.timeout_s);
    return std::nullopt;
  }
  return Turn{g.text, RemoteStatsLine(g, flags.server)};
}

int RunChat(const ChatFlags& f) {
  std::unique_ptr<Session> session;
  GenerateOptions options = f.remote.gen;
  const bool remote = !f.remote.server.empty();
  if (!remote) {
    auto opened = OpenSession(f.model);
    if (!opened.ok()) return Fail(opened.status());
    session = std::make_unique<Session>(std::move(*opened));
    options.strategy = session->strategy;
    // A model without a template is refused before the first line is read.
    if (auto probe = session->tokenizer->ApplyChatTemplate({{"user", "x"}}, true); !probe.ok()) {
      return Fail(absl::FailedPreconditionError(absl::StrFormat(
          "--model: %s has no chat template (%s); kvshare generate continues plain text",
          session->model->config().name, probe.status().message())));
    }
  }
  const bool interactive = isatty(STDIN_FILENO) != 0;
  if (interactive) {
    std::cerr << absl::StrFormat(
        "kvshare chat with %s: type a message; /reset forgets the conversation, /quit (or "
        "Ctrl-D) ends\n",
        remote ? f.remote.server : session->model->config().name);
  }
  std::vector<ChatMessage> history;
  auto reset = [&]() {
    history.clear();
    if (!f.remote.system.empty()) history.push_back({"system", f.remote.system});
  };
  reset();
  std::string line;
  while (true) {
    if (interactive) std::cerr << "> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/reset") {
      reset();
      std::cerr << "[conversation reset]\n";
      continue;
    }
    if (line[0] == '/') {
      std::cerr << absl::StrFormat("[unknown command %s: /reset or /quit]\n", line);
      continue;
    }
    history.push_back({"user", line});
    std::optional<Turn> turn;
    if (remote) {
      turn = RemoteTurn(f.remote, history);
      if (!turn.has_value()) return 1;
    } else {
      auto local = LocalTurn(*session, options, history);
      if (!local.ok()) {
        std::fputc('\n', stdout);
        return Fail(local.status());
      }
      turn = std::move(*local);
    }
    std::fputc('\n', stdout);
    std::fflush(stdout);
    std::cerr << turn->stats << "\n";
    history.push_back({"assistant", turn->reply});
  }
  return 0;
}

}  // namespace

Runner RegisterChat(CLI::App& app) {
  auto f = std::make_shared<ChatFlags>();
  RemoteGenerateFlags& r = f->remote;
  CLI::App* sub = app.add_subcommand(
      "chat",
      "Chat with a model, line by line from stdin (the conversation is kept; /reset, /quit)");
  AddModelFlags(sub, &f->model);
  sub->add_option("--server", r.server,
                  "Chat with a kvshare-worker at HOST:PORT instead of running the model here");
  sub->add_option("--system", r.system, "System message (default: the template's)");
  sub->add_option("--max-tokens", r.gen.max_tokens, "Most tokens per reply")->capture_default_str();
  sub->add_option("--temperature", r.gen.sampling.temperature, "0 = greedy")->capture_default_str();
  sub->add_option("--top-k", r.gen.sampling.top_k, "Keep the k most likely tokens (0 = all)")
      ->capture_default_str();
  sub->add_option("--top-p", r.gen.sampling.top_p, "Nucleus mass in (0, 1]")->capture_default_str();
  sub->add_option("--seed", r.gen.sampling.seed, "Sampling seed")->capture_default_str();
  sub->add_option("--stop", r.gen.stop, "Stop string (repeatable)");
  sub->add_option("--strategy-version", r.strategy_version,
                  "With --server: run this strategy version (default: the worker's current)");
  sub->add_option("--timeout", r.timeout_s, "With --server: seconds to wait for each reply")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  return [f]() -> int {
    f->remote.chat = true;
    return RunChat(*f);
  };
}

}  // namespace kvshare::cli
