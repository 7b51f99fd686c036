/* Real libpq, as tight as it gets: connect with one conninfo again and again for N seconds and
 * count what happened. Used to measure how often a client that opens sslcert, then sslkey, sees
 * a certificate and key that do not match while the agent swaps them. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  double end = now() + atof(argv[2]);
  long ok = 0, mismatch = 0, other = 0;
  while (now() < end) {
    PGconn *c = PQconnectdb(argv[1]);
    if (PQstatus(c) == CONNECTION_OK) ok++;
    else {
      const char *m = PQerrorMessage(c);
      if (strstr(m, "does not match private key") || strstr(m, "key values mismatch")) mismatch++;
      else if (++other <= 3) fprintf(stderr, "%s", m);
    }
    PQfinish(c);
  }
  printf("{\"ok\":%ld,\"mismatch\":%ld,\"other\":%ld}\n", ok, mismatch, other);
  return 0;
}
