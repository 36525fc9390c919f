// Registration of the polder subcommands; each is defined in cli/cmd_<name>.cpp. A subcommand's callback
// runs inside app.parse(), so errors it throws reach main()'s one-line reporting.
#pragma once

namespace CLI {
class App;
}

namespace polder::cli {
void register_tokenizer(CLI::App& app);  // polder tokenizer train|encode|decode|stats
void register_data(CLI::App& app);       // polder data prepare|inspect
void register_train(CLI::App& app);      // polder train|eval|generate|info
void register_convert(CLI::App& app);    // polder convert --from/--to hf|polder, --reshard
void register_plan(CLI::App& app);       // polder plan --config --cluster --gpus ...
}  // namespace polder::cli
