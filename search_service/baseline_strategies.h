// Training-free cross-layer sharing patterns from the literature, as strategy generators at a
// given memory level (k of L layers share), to compare searched strategies with at equal KV
// memory. Each is a plain kv_source; every source is a root (sharing layers read owners).
//
//   alternate  each odd layer reads the layer below it (CLA with sharing factor 2, Brandon et
//              al. 2024). With k < L/2 the k sharing layers are odd layers spread evenly over
//              the depth: of the m = floor(L/2) odd layers 1, 3, ..., the ones with index
//              floor((t + 0.5) * m / k), t = 0 .. k-1. k <= floor(L/2).
//   groups     groups of g = group_size adjacent layers, each reading the group's lowest layer
//              (CLA with factor g), from the top of the model down: layers L-g+1 .. L-1 read
//              L-g, then the group below, until k layers share; the last group takes only as
//              many layers above its lowest one as are left, and the bottom group is clipped
//              at layer 0. k <= the layers above every group's lowest (20 of 30 for g = 3).
//   middle     the top k layers all read one middle layer, L-k-1, the highest owner (YOCO's
//              cross-decoder, where the upper half reads the middle layer's cache).
//   minicache  adjacent deep layers pair up, in the spirit of MiniCache (which merges the KV
//              of adjacent layers from the middle of the depth up): the deepest 2k layers in
//              pairs (L-2k, L-2k+1), ..., (L-2, L-1), the upper of each reading the lower.
//              k <= floor((L-1) / 2).
//
// All pure functions; InvalidArgument naming the pattern, k and its limit.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvshare {

enum class BaselinePattern { kAlternate, kGroups, kMiddle, kMiniCache };
const char* BaselinePatternName(BaselinePattern pattern);
// "alternate", "groups", "middle", "minicache"; InvalidArgument otherwise.
absl::StatusOr<BaselinePattern> ParseBaselinePattern(const std::string& name);
const std::vector<BaselinePattern>& AllBaselinePatterns();

struct BaselineOptions {
  int group_size = 3;  // kGroups only; >= 2
};

// kv_source of `pattern` with exactly `shared` of `n_layers` layers sharing.
absl::StatusOr<std::vector<int>> BaselineStrategy(BaselinePattern pattern, int n_layers, int shared,
                                                  const BaselineOptions& options = {});

}  // namespace kvshare
