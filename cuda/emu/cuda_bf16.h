// Stand-in for the CUDA toolkit header of the same name: the emulator (cuda_emu.h).
#pragma once
#include "cuda_emu.h"
