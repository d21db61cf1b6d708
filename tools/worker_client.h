// The `kvshare` commands that talk to a running kvshare-worker: `generate --server`, `chat
// --server` and `load`.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/engine/generate.h"
#include "grpcpp/support/status.h"
#include "kvshare/v1/inference.pb.h"

namespace kvshare::cli {

struct RemoteGenerateFlags {
  std::string server;  // HOST:PORT
  std::string prompt;
  bool chat = false;
  std::string system;
  GenerateOptions gen;  // max_tokens, sampling, stop (its strategy is ignored)
  bool no_echo = false;
  int64_t strategy_version = -1;  // < 0: the worker's current version
  bool ignore_eos = false;
  double timeout_s = 300;  // deadline on the whole stream
};

// The Generate request the flags describe (chat: the system message, if any, and the prompt
// as the user's).
v1::GenerateRequest ToRequest(const RemoteGenerateFlags& flags);

// One streamed Generate: its start and end messages and the whole text.
struct RemoteGeneration {
  v1::GenerateStart start;
  v1::GenerateEnd end;
  std::string text;
};

// Runs `request` on the worker at `server` under a `timeout_s` deadline, handing each chunk's
// text to `on_text` as it arrives; gRPC's status at the end.
grpc::Status StreamGenerate(const std::string& server, const v1::GenerateRequest& request,
                            double timeout_s,
                            const std::function<void(const std::string&)>& on_text,
                            RemoteGeneration* out);

// "[N prompt tokens; M generated; queue ..., finish: ...; strategy ...; request ... @ server]"
std::string RemoteStatsLine(const RemoteGeneration& g, const std::string& server);

// Streams one completion from the worker to stdout (stats to stderr); the exit code.
int RunRemoteGenerate(const RemoteGenerateFlags& flags);

}  // namespace kvshare::cli
