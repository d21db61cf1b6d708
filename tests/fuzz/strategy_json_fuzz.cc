// libFuzzer target: a strategy file's text through SharingStrategy::FromJson; a strategy that
// loads must survive the round trip through its own JSON with the same content id.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/strategy/sharing_strategy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<kvshare::SharingStrategy> strategy = kvshare::SharingStrategy::FromJson(text);
  if (!strategy.ok()) return 0;
  absl::StatusOr<kvshare::SharingStrategy> again =
      kvshare::SharingStrategy::FromJson(strategy->ToJson());
  if (!again.ok() || again->id() != strategy->id()) std::abort();  // a round trip must hold
  return 0;
}
