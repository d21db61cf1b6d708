# The CUDA plugin's ABI number (kernels/cuda/cuda_plugin.h KVSHARE_CUDA_PLUGIN_ABI): the first 28
# bits of the SHA-256 of the interface headers the loader and the plugin share, so a plugin
# built from other headers (a stale build) is refused at load time instead of crashing on a
# virtual call. Any edit of those headers changes it.
#
#   include(plugin_abi.cmake); kvshare_plugin_abi(OUT_VAR header...)    in a CMakeLists.txt
#   cmake -DKVSHARE_ABI_FILES="a.h;b.h" -P plugin_abi.cmake                prints the number
function(kvshare_plugin_abi out)
  set(all "")
  foreach(f ${ARGN})
    file(SHA256 "${f}" h)
    string(APPEND all "${h}")
  endforeach()
  string(SHA256 digest "${all}")
  string(SUBSTRING "${digest}" 0 7 head)
  math(EXPR value "0x${head}" OUTPUT_FORMAT DECIMAL)
  set(${out} ${value} PARENT_SCOPE)
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND DEFINED KVSHARE_ABI_FILES)
  kvshare_plugin_abi(value ${KVSHARE_ABI_FILES})
  message("${value}")
endif()
