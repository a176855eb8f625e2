// What the library was built with and what the machine offers.
#pragma once

#include <string>

namespace fsa {

struct CudaDeviceInfo {
  bool available = false;  // built with CUDA and a device is present
  int device_count = 0;
  std::string name;        // of device 0
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  std::string reason;      // why not available, when it is not
};

bool built_with_cuda();
CudaDeviceInfo cuda_device_info();
const char* version();

}  // namespace fsa
