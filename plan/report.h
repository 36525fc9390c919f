// What `polder plan` prints: a ranked table with the winner's memory and time breakdown and its YAML, or the
// same as JSON (every valid layout, the rejected ones with their reasons).
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "plan/planner.h"

namespace polder::plan {

std::string plan_text(const PlanRequest& request, const PlanResult& result, int64_t top,
                      int64_t show_rejected);
nlohmann::json plan_json(const PlanRequest& request, const PlanResult& result, int64_t show_rejected);
nlohmann::json candidate_json(const Candidate& c);

}  // namespace polder::plan
