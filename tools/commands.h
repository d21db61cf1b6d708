// The `kvshare` subcommands. Each Register* adds its subcommand to the app and returns the
// function that runs it (returning the process exit code).
#pragma once

#include <functional>

#include "CLI/CLI.hpp"

namespace kvshare::cli {

using Runner = std::function<int()>;

Runner RegisterGenerate(CLI::App& app);
Runner RegisterEval(CLI::App& app);
Runner RegisterInfo(CLI::App& app);
Runner RegisterSearch(CLI::App& app);
Runner RegisterStrategy(CLI::App& app);
Runner RegisterRebind(CLI::App& app);      // strategy_command.cc
Runner RegisterLoad(CLI::App& app);        // worker_client_commands.cc
Runner RegisterStrategies(CLI::App& app);  // search_client_commands.cc
Runner RegisterRollout(CLI::App& app);     // fleet_commands.cc
Runner RegisterFleet(CLI::App& app);       // fleet_commands.cc
Runner RegisterHealth(CLI::App& app);      // health_command.cc
Runner RegisterChat(CLI::App& app);        // chat_command.cc

}  // namespace kvshare::cli
