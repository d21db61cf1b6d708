// The `kvshare` commands that talk to a running kvshare-worker: `generate --server` and `load`.
#pragma once

#include <cstdint>
#include <string>

#include "common/engine/generate.h"

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
};

// Streams one completion from the worker to stdout (stats to stderr); the exit code.
int RunRemoteGenerate(const RemoteGenerateFlags& flags);

}  // namespace kvshare::cli
