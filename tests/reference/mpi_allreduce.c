/* Open MPI baseline for `troupe bench allreduce`: MPI_Allreduce (float, sum) over the same
 * sizes and with the same method as ours: per size one warm-up round and 3 timed rounds of
 * `iters` all-reduces (64 MiB / size, clamped to 5..200), each round's time the slowest
 * rank's mean, the median round reported; then one all-reduce of integer data checked
 * against the closed form. Built by CMake when MPI is found; run by the bench as
 *   mpirun -np N --bind-to none [--oversubscribe] mpi_allreduce MAX_BYTES
 * Prints one line per size: "size <bytes> time_us <t> wrong <n>". */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, n;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  long long max_bytes = argc > 1 ? atoll(argv[1]) : (64LL << 20);
  for (long long bytes = 4096; bytes <= max_bytes; bytes *= 4) {
    size_t count = (size_t)bytes / 4;
    long long it = (64LL << 20) / bytes;
    int iters = (int)(it < 5 ? 5 : it > 200 ? 200 : it);
    float* d = calloc(count, sizeof(float));
    double slowest[3];
    for (int round = 0; round < 4; ++round) {
      MPI_Barrier(MPI_COMM_WORLD);
      double t0 = MPI_Wtime();
      for (int i = 0; i < iters; ++i) MPI_Allreduce(MPI_IN_PLACE, d, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      double mine = (MPI_Wtime() - t0) / iters, worst = 0;
      MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      if (round > 0) slowest[round - 1] = worst;
    }
    qsort(slowest, 3, sizeof(double), cmp);
    for (size_t i = 0; i < count; ++i) d[i] = (float)((rank + 1) * (int)(1 + i % 7));
    MPI_Allreduce(MPI_IN_PLACE, d, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    long long wrong = 0, total = 0;
    const float ranks_sum = (float)(n * (n + 1) / 2);
    for (size_t i = 0; i < count; ++i) wrong += d[i] != ranks_sum * (float)(1 + i % 7);
    MPI_Reduce(&wrong, &total, 1, MPI_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("size %lld time_us %.2f wrong %lld\n", bytes, slowest[1] * 1e6, total);
    fflush(stdout);
    free(d);
  }
  MPI_Finalize();
  return 0;
}
