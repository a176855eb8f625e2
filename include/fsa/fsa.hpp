// Umbrella header of the public C++ API.
#pragma once

#include "fsa/cache.hpp"
#include "fsa/config.hpp"
#include "fsa/convert.hpp"
#include "fsa/layer.hpp"
#include "fsa/ops.hpp"
#include "fsa/runtime.hpp"
#include "fsa/status.hpp"
#include "fsa/types.hpp"
#include "fsa/workspace.hpp"
