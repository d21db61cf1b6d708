# Per-target include paths that enforce the dependency rule (docs/ARCHITECTURE.md).
#
# Every header is included by its path from the repository root ("common/engine/kv_cache.h"),
# so putting the root on a target's include path would let it include anything. Instead each
# library gets a folder of its own under the build tree holding links to just the top-level
# modules it may use; an #include of any other module does not compile. scripts/check_deps.py
# checks what links cannot see (system headers such as gRPC's in common/, and the split of
# search_service/ into the library and server/).
#
#   kvshare_allow_modules(<target> <module>...)   e.g. kvshare_allow_modules(kvshare_common
#                                                 kernels common)
# Tools, benchmarks and tests see the whole tree: kvshare_allow_modules(<target> ALL).
function(kvshare_allow_modules target)
  if(ARGN STREQUAL "ALL")
    target_include_directories(${target} PRIVATE ${CMAKE_SOURCE_DIR})
    return()
  endif()
  set(root ${CMAKE_BINARY_DIR}/layering/${target})
  file(REMOVE_RECURSE ${root})
  file(MAKE_DIRECTORY ${root})
  foreach(module IN LISTS ARGN)
    if(NOT IS_DIRECTORY ${CMAKE_SOURCE_DIR}/${module})
      message(FATAL_ERROR "kvshare_allow_modules(${target}): no module '${module}'")
    endif()
    file(CREATE_LINK ${CMAKE_SOURCE_DIR}/${module} ${root}/${module} SYMBOLIC)
  endforeach()
  target_include_directories(${target} PRIVATE ${root})
endfunction()
