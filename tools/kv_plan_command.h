// `kvshare search --max-ppl-increase P`: the KV plan search (search_service/kv_plan_search.h)
// run locally, its plan written as a strategy with per-layer KV types.
#pragma once

#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "search_service/heldout_quality.h"
#include "search_service/search_request.h"
#include "tools/session.h"

namespace kvshare::cli {

struct PlanSearchFlags {
  double max_ppl_increase = 0;           // percent; set by --max-ppl-increase
  std::string plan_types = "int8,int4";  // --plan-types: the precisions the plan may lower to
  bool no_share = false;                 // --no-share: precision only
};

// Adds --max-ppl-increase, --plan-types and --no-share to `search`; returns the budget option
// (count() > 0: run the plan search).
CLI::Option* AddPlanSearchFlags(CLI::App* search, PlanSearchFlags* flags);

// Runs the plan search over prepared.calibration, trimming on (and recording the quality of)
// `heldout`, and writes the strategy to `out`. best_of: --best-of for the sharing step;
// block_tokens: --block-tokens, the serving pool's block size the plan is searched for;
// activations: --activations / --int8 when given (else the search's default, int8x2).
int RunPlanSearchCommand(const Session& session, const PreparedSearch& prepared,
                         HeldoutSlice heldout, const PlanSearchFlags& flags, int best_of,
                         int threads, int block_tokens, std::optional<cpu::Activations> activations,
                         const std::string& out);

}  // namespace kvshare::cli
