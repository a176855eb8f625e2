#!/usr/bin/env bash
# Installs from Debian's packages what a fresh machine lacks to build and test fsa: a C++20
# compiler, CMake >= 3.24, GoogleTest. The CUDA toolkit is optional: without nvcc the CPU backend
# alone is built.
set -euo pipefail
missing=()
command -v g++ >/dev/null || missing+=(g++)
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)
if [[ ! -f /usr/src/googletest/CMakeLists.txt && ! -f /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake \
      && ! -f /usr/lib/cmake/GTest/GTestConfig.cmake ]]; then
  missing+=(libgtest-dev googletest)
fi
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
