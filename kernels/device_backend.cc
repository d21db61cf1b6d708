#include "kernels/device_backend.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/cuda/cuda_plugin.h"

namespace kvshare {
namespace {

// The plugin, or why there is none. Loaded at most once per path.
struct LoadedPlugin {
  const KvshareCudaPlugin* plugin = nullptr;
  std::string path;    // where it was loaded from
  std::string reason;  // when plugin is null
};

std::string ExecutableDir() {
  std::vector<char> buf(4096);
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return "";
  std::string exe(buf.data(), n);
  const size_t slash = exe.rfind('/');
  return slash == std::string::npos ? "" : exe.substr(0, slash);
}

bool Exists(const std::string& path) { return access(path.c_str(), R_OK) == 0; }

LoadedPlugin LoadPluginUncached(const std::string& explicit_path) {
  std::vector<std::string> candidates;
  if (!explicit_path.empty()) {
    candidates.push_back(explicit_path);
  } else {
    if (const char* env = std::getenv("KVSHARE_CUDA_PLUGIN"); env != nullptr && *env != '\0') {
      candidates.push_back(env);
    }
#ifdef KVSHARE_CUDA_PLUGIN_BUILD_PATH
    if (Exists(KVSHARE_CUDA_PLUGIN_BUILD_PATH))
      candidates.push_back(KVSHARE_CUDA_PLUGIN_BUILD_PATH);
#endif
    if (const std::string dir = ExecutableDir(); !dir.empty()) {
      const std::string beside = absl::StrCat(dir, "/", KVSHARE_CUDA_PLUGIN_FILE);
      if (Exists(beside)) candidates.push_back(beside);
    }
    candidates.push_back(KVSHARE_CUDA_PLUGIN_FILE);  // LD_LIBRARY_PATH and the system paths
  }
  LoadedPlugin out;
  std::vector<std::string> errors;
  for (const std::string& path : candidates) {
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* e = dlerror();
      errors.push_back(e != nullptr ? e : path + ": dlopen failed");
      continue;
    }
    auto fn = reinterpret_cast<KvshareCudaPluginFn>(dlsym(handle, KVSHARE_CUDA_PLUGIN_SYMBOL));
    const KvshareCudaPlugin* plugin = fn != nullptr ? fn() : nullptr;
    if (plugin == nullptr) {
      errors.push_back(absl::StrCat(path, ": no ", KVSHARE_CUDA_PLUGIN_SYMBOL));
      continue;
    }
    if (plugin->abi_version != KVSHARE_CUDA_PLUGIN_ABI) {
      errors.push_back(absl::StrFormat(
          "%s: a stale plugin: its ABI %d is not this build's %d (it was built from other "
          "interface headers; rebuild kvshare_cuda from this tree)",
          path, plugin->abi_version, KVSHARE_CUDA_PLUGIN_ABI));
      continue;
    }
    out.plugin = plugin;
    out.path = path;
    return out;  // the handle stays open for the life of the process
  }
#ifdef KVSHARE_CUDA_PLUGIN_BUILD_PATH
  const char* built = "";
#else
  const char* built =
      "this build has no CUDA plugin (no CUDA compiler at configure time, or "
      "KVSHARE_CUDA=OFF); ";
#endif
  out.reason = absl::StrCat(built, "the CUDA plugin ", KVSHARE_CUDA_PLUGIN_FILE,
                            " could not be loaded: ", absl::StrJoin(errors, "; "));
  return out;
}

const LoadedPlugin& LoadPlugin(const std::string& explicit_path) {
  static std::mutex mu;
  static auto* cache = new std::map<std::string, LoadedPlugin>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(explicit_path);
  if (it == cache->end())
    it = cache->emplace(explicit_path, LoadPluginUncached(explicit_path)).first;
  return it->second;
}

DeviceInfo CpuInfo(const Backend& backend) {
  DeviceInfo info;
  info.kind = "cpu";
  info.name = backend.name();
  const long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES),
             page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) info.total_memory_bytes = int64_t(pages) * page;
  if (avail > 0 && page > 0) info.free_memory_bytes = int64_t(avail) * page;
  return info;
}

// "cuda" -> 0, "cuda:3" -> 3; -1 for anything else.
int CudaOrdinal(const std::string& device) {
  if (device == "cuda") return 0;
  int n = -1;
  if (absl::StartsWith(device, "cuda:") && absl::SimpleAtoi(device.substr(5), &n) && n >= 0) {
    return n;
  }
  return -1;
}

absl::StatusOr<DeviceBackend> MakeCuda(const DeviceOptions& options, int ordinal) {
  auto info = ProbeCuda(ordinal, options.plugin_path);
  if (!info.ok()) return info.status();
  const LoadedPlugin& loaded = LoadPlugin(options.plugin_path);
  KvshareCudaBackendOptions o{ordinal, options.cuda_bf16 ? 1 : 0};
  char err[1024] = {0};
  void* b = loaded.plugin->create_backend(&o, err, sizeof(err));
  if (b == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("the CUDA backend did not start: ", err));
  }
  DeviceBackend out;
  out.backend.reset(static_cast<Backend*>(b));
  out.info = *std::move(info);
  return out;
}

}  // namespace

int CudaPluginAbi() { return KVSHARE_CUDA_PLUGIN_ABI; }

std::string DeviceInfo::Describe() const {
  constexpr double kGiB = 1024.0 * 1024 * 1024;
  if (kind == "cuda") {
    return absl::StrFormat("cuda:%d %s (sm_%d%d, %.1f of %.1f GiB free)", ordinal, name,
                           compute_major, compute_minor, free_memory_bytes / kGiB,
                           total_memory_bytes / kGiB);
  }
  return absl::StrFormat("%s, %.1f GiB memory", name, total_memory_bytes / kGiB);
}

absl::StatusOr<DeviceInfo> ProbeCuda(int ordinal, const std::string& plugin_path) {
  const LoadedPlugin& loaded = LoadPlugin(plugin_path);
  if (loaded.plugin == nullptr) return absl::FailedPreconditionError(loaded.reason);
  KvshareCudaDeviceInfo raw;
  char err[1024] = {0};
  if (loaded.plugin->probe(ordinal, &raw, err, sizeof(err)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("CUDA device %d unusable (plugin %s): %s", ordinal, loaded.path, err));
  }
  DeviceInfo info;
  info.kind = "cuda";
  info.name = raw.name;
  info.ordinal = raw.ordinal;
  info.compute_major = raw.compute_major;
  info.compute_minor = raw.compute_minor;
  info.total_memory_bytes = raw.total_bytes;
  info.free_memory_bytes = raw.free_bytes;
  info.peak_bandwidth_gbs = raw.peak_bandwidth_gbs;
  return info;
}

absl::StatusOr<DeviceBackend> MakeBackend(const DeviceOptions& options) {
  if (options.device == "cpu") {
    DeviceBackend out;
    out.backend = MakeCpuBackend(options.cpu);
    out.info = CpuInfo(*out.backend);
    out.note = "cpu: as asked";
    return out;
  }
  if (options.device == "auto") {
    auto cuda = MakeCuda(options, 0);
    if (cuda.ok()) {
      cuda->note = "auto: CUDA device 0 is usable";
      return cuda;
    }
    DeviceBackend out;
    out.backend = MakeCpuBackend(options.cpu);
    out.info = CpuInfo(*out.backend);
    out.note =
        absl::StrCat("auto: CUDA unavailable (", cuda.status().message(), "); using the CPU");
    return out;
  }
  const int ordinal = CudaOrdinal(options.device);
  if (ordinal < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("device \"%s\" is not one of auto, cpu, cuda, cuda:N", options.device));
  }
  auto cuda = MakeCuda(options, ordinal);
  if (!cuda.ok()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("device \"%s\" requested but CUDA is unavailable: %s", options.device,
                        cuda.status().message()));
  }
  cuda->note = absl::StrFormat("%s: as asked", options.device);
  return cuda;
}

}  // namespace kvshare
