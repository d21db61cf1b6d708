// kvshare: the command line for KV-sharing models (generate, eval, info, ...).
#include <iostream>
#include <map>

#include "CLI/CLI.hpp"
#include "service_runtime/service_flags.h"
#include "service_runtime/service_logging.h"
#include "spdlog/spdlog.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{
      "kvshare: cross-layer KV-cache sharing (KVSharer) for Llama-family models.\n"
      "Run `kvshare <command> --help` for a command's flags."};
  app.require_subcommand(1);
  kvshare::runtime::AddVersionFlag(app, "kvshare");
  std::string log_level = "warn";
  kvshare::runtime::AddLogLevelFlag(app, &log_level);
  std::string log_format = "logfmt";
  kvshare::runtime::AddLogFormatFlag(app, &log_format);
  std::map<CLI::App*, kvshare::cli::Runner> runners;
  for (auto reg :
       {kvshare::cli::RegisterGenerate, kvshare::cli::RegisterEval, kvshare::cli::RegisterInfo,
        kvshare::cli::RegisterSearch, kvshare::cli::RegisterStrategy, kvshare::cli::RegisterRebind,
        kvshare::cli::RegisterLoad, kvshare::cli::RegisterStrategies, kvshare::cli::RegisterRollout,
        kvshare::cli::RegisterFleet, kvshare::cli::RegisterHealth, kvshare::cli::RegisterChat}) {
    kvshare::cli::Runner run = reg(app);
    runners[app.get_subcommands({}).back()] = std::move(run);
  }
  CLI11_PARSE(app, argc, argv);
  spdlog::set_formatter(kvshare::runtime::MakeLogFormatter(log_format));
  spdlog::set_level(spdlog::level::from_str(log_level));
  for (auto& [sub, run] : runners) {
    if (sub->parsed()) return run();
  }
  return 1;
}
