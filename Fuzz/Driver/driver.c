// The declaration in include/FuzzDriver.h is what the fuzz targets need; libFuzzer defines the function.
//
// A debug build links an executable with `--defsym main=<module>_main`, so the linker also pulls libFuzzer's own
// `main`, which wants `LLVMFuzzerTestOneInput`. The targets call the driver from their own entry point instead
// (which is the `main` that runs): this definition only satisfies the linker, and stops loudly if it ever runs.
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)data;
    (void)size;
    fprintf(stderr, "FuzzDriver: libFuzzer's main ran instead of the target's entry point\n");
    abort();
}
