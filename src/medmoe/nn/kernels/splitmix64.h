// The dropout word shared by the kernels that draw dropout masks (dropout.cpp, expert_epilogue.cpp): element i
// of a call with key `seed` is kept iff dropout_word(seed, i) >= round(p * 2^32).
//
// It is the SplitMix64 output function (Steele, Lea & Flood 2014) on the counter seed + (i + 1) * GAMMA: for a
// fixed seed the words form the SplitMix64 stream, which passes BigCrush. Two 64-bit multiplies per element,
// vectorised with AVX-512 DQ where available. Headers in this folder are part of every kernel's build-cache key.
#pragma once
#include <cstdint>

static inline uint32_t dropout_word(uint64_t seed, int64_t i) {
    uint64_t z = seed + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (uint32_t)(z >> 32);
}
