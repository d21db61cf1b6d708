#include "service_runtime/drain.h"

#include "spdlog/spdlog.h"

namespace kvshare::runtime {

bool DrainAndShutdown(GrpcServer& server, const DrainSteps& steps, const DrainOptions& options) {
  server.SetServing(false);
  if (steps.stop_admitting) steps.stop_admitting();
  spdlog::info("event=drain_started grace_s={}", absl::ToDoubleSeconds(options.grace));
  bool clean = true;
  if (steps.wait_until_idle && !steps.wait_until_idle(options.grace)) {
    clean = false;
    if (steps.cancel_remaining) steps.cancel_remaining();
    if (!steps.wait_until_idle(options.cancel_wait)) {
      spdlog::warn("event=drain_cancel_timeout wait_s={}",
                   absl::ToDoubleSeconds(options.cancel_wait));
    }
  }
  spdlog::info("event=drain_done clean={}", clean);
  server.Shutdown(options.shutdown_deadline);
  return clean;
}

}  // namespace kvshare::runtime
