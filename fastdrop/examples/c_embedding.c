/* Embedding fastdrop in C: header-only, no Python needed.
 *
 * Build: cc -O2 -I "$(python -c 'import fastdrop; print(fastdrop.get_include())')" \
 *           c_embedding.c -o c_embedding -lm
 * Prints the mask words of 200 elements (p = 0.3, seed 42, stream 7, offset 100),
 * then the dropout of x[i] = i + 0.5 for the first 8 elements.
 */
#include <inttypes.h>
#include <stdio.h>

#include <fastdrop/dropout.h>

int main(void)
{
    enum { N = 200 };
    const double p = 0.3;
    fd_mask_params params = fd_mask_params_make(42, 7, p, 100, N);
    uint64_t words[(N + 63) / 64];
    fd_mask_words_range(words, &params, 0, fd_words_for(N));
    for (int64_t k = 0; k < fd_words_for(N); ++k)
        printf("%" PRIu64 "\n", words[k]);

    float x[N];
    for (int i = 0; i < N; ++i)
        x[i] = (float)i + 0.5f;
    const float scale = (float)(1.0 / (1.0 - p)); /* s rounded once to float */
    fd_dropout_range_f32(x, x, NULL, scale, &params, 0, fd_words_for(N));
    for (int i = 0; i < 8; ++i)
        printf("%.9g\n", x[i]);
    return 0;
}
