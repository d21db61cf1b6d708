#include "search_service/early_reject.h"

#include <algorithm>
#include <cmath>

namespace kvshare {

bool OverBudgetBeyondDoubt(absl::Span<const double> increases, size_t total_units,
                           const EarlyReject& rule) {
  const size_t n = increases.size();
  if (int(n) < rule.min_units || n < 2 || total_units < n) return false;
  double sum = 0, sum_sq = 0;
  for (double d : increases) {
    sum += d;
    sum_sq += d * d;
  }
  const double mean = sum / double(n);
  const double var = std::max(0.0, (sum_sq - double(n) * mean * mean) / double(n - 1));
  const double unread = double(total_units - n);
  return mean - rule.z * std::sqrt(var * unread / (double(total_units) * double(n))) >
         rule.above_nats;
}

}  // namespace kvshare
