#include "inference_service/load_generator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <thread>

#include "absl/status/status.h"

namespace kvshare {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Nearest-rank percentile of sorted samples.
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * sorted.size()));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

}  // namespace

LatencySummary Summarize(std::vector<double> samples) {
  LatencySummary s;
  s.count = static_cast<int64_t>(samples.size());
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  double sum = 0;
  for (double v : samples) sum += v;
  s.mean = sum / samples.size();
  s.p50 = Percentile(samples, 50);
  s.p90 = Percentile(samples, 90);
  s.p99 = Percentile(samples, 99);
  s.max = samples.back();
  return s;
}

LoadReport RunLoad(const std::shared_ptr<grpc::Channel>& channel, const LoadOptions& options) {
  auto stub = v1::InferenceService::NewStub(channel);
  std::atomic<int> next{0};
  std::mutex mu;
  LoadReport report;
  report.concurrency = options.concurrency;
  report.requests = options.requests;
  std::vector<double> ttft, itl, e2e, queue;

  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < options.concurrency; ++t) {
    threads.emplace_back([&] {
      std::vector<double> my_ttft, my_itl, my_e2e, my_queue;
      int ok = 0;
      int64_t prompt = 0, completion = 0;
      std::map<std::string, int> errors;
      for (int i; (i = next.fetch_add(1)) < options.requests;) {
        const v1::GenerateRequest request = options.make_request(i);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(int64_t(options.timeout_seconds * 1000)));
        const Clock::time_point sent = Clock::now();
        auto reader = stub->Generate(&ctx, request);
        v1::GenerateResponse msg;
        Clock::time_point last;
        bool first = true;
        v1::GenerateEnd end;
        while (reader->Read(&msg)) {
          if (msg.has_chunk() && msg.chunk().token_ids_size() > 0) {
            const Clock::time_point now = Clock::now();
            if (first) {
              my_ttft.push_back(Since(sent, now));
              first = false;
            } else {
              my_itl.push_back(Since(last, now));
            }
            // Tokens that arrived together in one chunk had no gap between them.
            for (int k = 1; k < msg.chunk().token_ids_size(); ++k) my_itl.push_back(0.0);
            last = now;
          } else if (msg.has_end()) {
            end = msg.end();
          }
        }
        const grpc::Status status = reader->Finish();
        if (status.ok()) {
          ++ok;
          my_e2e.push_back(Since(sent, Clock::now()));
          my_queue.push_back(end.timings().queue_seconds());
          prompt += end.usage().prompt_tokens();
          completion += end.usage().completion_tokens();
        } else {
          ++errors[CodeName(status.error_code())];
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      ttft.insert(ttft.end(), my_ttft.begin(), my_ttft.end());
      itl.insert(itl.end(), my_itl.begin(), my_itl.end());
      e2e.insert(e2e.end(), my_e2e.begin(), my_e2e.end());
      queue.insert(queue.end(), my_queue.begin(), my_queue.end());
      report.ok += ok;
      report.prompt_tokens += prompt;
      report.completion_tokens += completion;
      for (const auto& [code, n] : errors) report.errors[code] += n;
    });
  }
  for (auto& t : threads) t.join();
  report.wall_seconds = Since(start, Clock::now());
  report.ttft = Summarize(std::move(ttft));
  report.inter_token = Summarize(std::move(itl));
  report.e2e = Summarize(std::move(e2e));
  report.queue = Summarize(std::move(queue));
  return report;
}

}  // namespace kvshare
