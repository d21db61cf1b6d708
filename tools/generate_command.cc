// kvshare generate: stream a completion (or a chat reply) to stdout.
#include <cstdio>
#include <iostream>

#include "absl/strings/str_format.h"
#include "common/engine/generate.h"
#include "tools/commands.h"
#include "tools/session.h"
#include "tools/worker_client.h"

namespace kvshare::cli {

Runner RegisterGenerate(CLI::App& app) {
  struct Flags {
    ModelFlags model;
    std::string prompt = "Once upon a time";
    bool chat = false;
    std::string system;
    GenerateOptions gen;
    bool no_echo = false;
    std::string server;
    int64_t strategy_version = -1;
    double timeout_s = 300;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand("generate", "Generate text from a prompt, streamed to stdout");
  AddModelFlags(sub, &flags->model);
  sub->add_option("--prompt", flags->prompt, "Prompt text")->capture_default_str();
  sub->add_flag("--chat", flags->chat,
                "Treat the prompt as a user message and apply the model's chat template");
  sub->add_option("--system", flags->system, "System message for --chat (default: the template's)");
  sub->add_option("--max-tokens", flags->gen.max_tokens, "Tokens to generate after the prompt")
      ->capture_default_str();
  sub->add_option("--temperature", flags->gen.sampling.temperature, "0 = greedy")
      ->capture_default_str();
  sub->add_option("--top-k", flags->gen.sampling.top_k, "Keep the k most likely tokens (0 = all)")
      ->capture_default_str();
  sub->add_option("--top-p", flags->gen.sampling.top_p, "Nucleus mass in (0, 1]")
      ->capture_default_str();
  sub->add_option("--seed", flags->gen.sampling.seed, "Sampling seed")->capture_default_str();
  sub->add_option("--stop", flags->gen.stop, "Stop string (repeatable)");
  sub->add_flag("--no-echo", flags->no_echo, "Do not print the prompt before the completion");
  sub->add_option("--server", flags->server,
                  "Stream from a kvshare-worker at HOST:PORT instead of running the model here");
  sub->add_option("--strategy-version", flags->strategy_version,
                  "With --server: run this strategy version (default: the worker's current)");
  sub->add_option("--timeout", flags->timeout_s,
                  "With --server: seconds to wait for the whole completion")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  return [flags]() -> int {
    if (!flags->server.empty()) {
      RemoteGenerateFlags remote;
      remote.server = flags->server;
      remote.prompt = flags->prompt;
      remote.chat = flags->chat;
      remote.system = flags->system;
      remote.gen = flags->gen;
      remote.no_echo = flags->no_echo;
      remote.strategy_version = flags->strategy_version;
      remote.timeout_s = flags->timeout_s;
      return RunRemoteGenerate(remote);
    }
    auto session = OpenSession(flags->model);
    if (!session.ok()) return Fail(session.status());
    const Tokenizer& tok = *session->tokenizer;
    std::vector<int32_t> prompt;
    if (flags->chat) {
      std::vector<ChatMessage> messages;
      if (!flags->system.empty()) messages.push_back({"system", flags->system});
      messages.push_back({"user", flags->prompt});
      auto text = tok.ApplyChatTemplate(messages, /*add_generation_prompt=*/true);
      if (!text.ok()) return Fail(text.status());
      prompt = tok.Encode(*text, /*add_bos=*/false);
    } else {
      prompt = tok.Encode(flags->prompt, tok.add_bos_by_default());
      if (!flags->no_echo) {
        std::fputs(tok.Decode(prompt).c_str(), stdout);
        std::fflush(stdout);
      }
    }
    GenerateOptions options = flags->gen;
    options.strategy = session->strategy;
    auto result =
        Generate(*session->engine, tok, prompt, options, [](int32_t, const std::string& piece) {
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
          return true;
        });
    std::fputc('\n', stdout);
    if (!result.ok()) return Fail(result.status());
    const double decode_tps = result->tokens.size() > 1 && result->decode_seconds > 0
                                  ? (result->tokens.size() - 1) / result->decode_seconds
                                  : 0.0;
    std::cerr << absl::StrFormat(
        "[%d prompt tokens in %.3f s (%.1f tok/s); %d generated, decode %.1f tok/s; finish: %s; "
        "strategy %s, %d/%d layers own KV; device %s]\n",
        prompt.size(), result->prefill_seconds, prompt.size() / result->prefill_seconds,
        result->tokens.size(), decode_tps, FinishReasonName(result->finish),
        session->strategy->id().substr(0, 12), session->strategy->owning_layers(),
        session->strategy->n_layers(), session->device.Describe());
    return 0;
  };
}

}  // namespace kvshare::cli
