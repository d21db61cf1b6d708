// kvshare: the command line for KV-sharing models (generate, eval, info, ...).
#include <iostream>
#include <map>

#include "CLI/CLI.hpp"
#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{
      "kvshare: cross-layer KV-cache sharing (KVSharer) for Llama-family models.\n"
      "Run `kvshare <command> --help` for a command's flags."};
  app.require_subcommand(1);
  std::map<CLI::App*, kvshare::cli::Runner> runners;
  for (auto reg :
       {kvshare::cli::RegisterGenerate, kvshare::cli::RegisterEval, kvshare::cli::RegisterInfo,
        kvshare::cli::RegisterSearch, kvshare::cli::RegisterStrategy, kvshare::cli::RegisterRebind,
        kvshare::cli::RegisterLoad, kvshare::cli::RegisterStrategies, kvshare::cli::RegisterRollout,
        kvshare::cli::RegisterFleet}) {
    kvshare::cli::Runner run = reg(app);
    runners[app.get_subcommands({}).back()] = std::move(run);
  }
  CLI11_PARSE(app, argc, argv);
  for (auto& [sub, run] : runners) {
    if (sub->parsed()) return run();
  }
  return 1;
}
