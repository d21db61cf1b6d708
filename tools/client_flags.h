// The flags every `kvshare` command that calls a server shares, and one default address per
// kind of server (README "The kvshare command line"):
//
//   search-service commands (search --server, strategies, rollout, fleet)
//       --server  default $KVSHARE_SERVER, else 127.0.0.1:50061 (kvshare-search's --port)
//   worker commands (load, health, and generate/chat when --server is given without a value
//   they have no default: leaving --server out runs the model here)
//       --server  default $KVSHARE_WORKER, else 127.0.0.1:50051 (kvshare-worker's --port)
//   --timeout SECONDS   a deadline on each call (> 0); a call that runs past it fails with
//                       DEADLINE_EXCEEDED, reported as such (rpc_failure.h)
//   --json              list and status commands: the response as JSON, its fields named as in
//                       the proto (kvshare/v1/*.proto, snake_case), every field present
#pragma once

#include <chrono>
#include <string>

#include "CLI/CLI.hpp"
#include "google/protobuf/message.h"

namespace kvshare::cli {

enum class ServerKind { kSearch, kWorker };

// The environment variable that overrides a kind's default address, and the address used
// when it is unset or empty.
const char* ServerEnvVar(ServerKind kind);
std::string BuiltInServer(ServerKind kind);
std::string DefaultServer(ServerKind kind);

// --server bound to `*server`, set to DefaultServer(kind) (shown in --help).
CLI::Option* AddServerFlag(CLI::App* app, std::string* server, ServerKind kind);
// --timeout bound to `*seconds` (its value is the default shown), checked > 0.
CLI::Option* AddTimeoutFlag(CLI::App* app, double* seconds, const std::string& what);
// --json bound to `*json`; `what` describes the output (default: a response message, in
// ToJsonLine's form).
CLI::Option* AddJsonFlag(CLI::App* app, bool* json,
                         const std::string& what =
                             "Print the answer as one line of JSON (the "
                             "response; field names as in "
                             "kvshare/v1/*.proto)");

std::chrono::system_clock::time_point DeadlineAfter(double seconds);

// `message` as one line of JSON with the proto's field names and every field (the --json
// form of a response).
std::string ToJsonLine(const google::protobuf::Message& message);

}  // namespace kvshare::cli
