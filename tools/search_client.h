// The `kvshare` side of the search service (kvshare-search): `kvshare search --server` runs
// the search as a job there and follows it with a progress bar; `kvshare strategies ...` reads
// and writes the registry (RegisterStrategies, in tools/commands.h). Implemented in
// search_client_commands.cc.
#pragma once

#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "search_service/heldout_quality.h"
#include "search_service/search_request.h"

namespace kvshare::cli {

// The flags `kvshare search` has only for a server.
struct RemoteSearchFlags {
  std::string server;              // host:port; empty = search locally
  std::string calibration_corpus;  // instead of --calibration: a corpus of the server's catalog
  bool publish = false;            // publish the strategy when the job succeeds
  std::string idempotency_key;     // empty: a fresh one (this command's own retries reuse it)
  bool detach = false;             // print the job id and return without following
  std::string follow;              // follow this existing job instead of creating one
  std::string cancel;              // cancel this job
  double timeout_s = 300;          // deadline on creating or cancelling the job (not on following)
};

void AddRemoteSearchFlags(CLI::App* search, RemoteSearchFlags* flags);
// InvalidArgument naming the flags that need --server when one is given without it.
absl::Status CheckNoRemoteFlags(const RemoteSearchFlags& flags);
// `kvshare search --server`: `model` is a catalog name (empty: smollm2); the request's
// calibration file, if any, is sent inline, with the selection rule and the held-out quality
// options (measured by the server on the calibration text after the calibration lines). Creates the
// job and, unless detached, follows it to its end, printing the result and writing `out` when
// given. The exit code: 0 when the job succeeded.
int RunRemoteSearchCommand(const RemoteSearchFlags& flags, const std::string& model,
                           const SearchRequest& request, const HeldoutOptions& heldout,
                           const std::string& out);

}  // namespace kvshare::cli
