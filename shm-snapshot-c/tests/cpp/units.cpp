// The header used from C++ as it is: commit two units on a private region,
// reopen nothing, recover them, print them. Built by tests/cpp.rs.
#include <cstdio>
#include <string>
#include <vector>

#include "shm_snapshot.h"

namespace {

// Owns a client for the scope, as a C++ program would wrap one.
struct Client {
    shm_snapshot_client *raw = nullptr;
    ~Client() { shm_snapshot_close(raw); }
};

int fail(const char *what, shm_snapshot_status status) {
    std::fprintf(stderr, "%s: %s (%s)\n", what, shm_snapshot_last_error(),
                 shm_snapshot_status_str(static_cast<int>(status)));
    return 1;
}

}  // namespace

int main() {
    Client client;
    shm_snapshot_config config = shm_snapshot_config_default();
    shm_snapshot_status s = shm_snapshot_open_anonymous(4u << 20, &config, &client.raw);
    if (s != SHM_SNAPSHOT_OK) return fail("open", s);
    for (const std::string unit : {"first", "second"}) {
        uint64_t seq = 0;
        s = shm_snapshot_commit(client.raw, unit.data(), unit.size(), &seq);
        if (s != SHM_SNAPSHOT_OK) return fail("commit", s);
    }
    shm_snapshot_units *units = nullptr;
    s = shm_snapshot_recover(client.raw, &units);
    if (s != SHM_SNAPSHOT_OK) return fail("recover", s);
    for (size_t i = 0; i < shm_snapshot_units_count(units); i++) {
        shm_snapshot_unit unit;
        if (shm_snapshot_units_get(units, i, &unit) != SHM_SNAPSHOT_OK) return 1;
        std::string bytes(reinterpret_cast<const char *>(unit.bytes), unit.len);
        std::printf("%llu %s\n", static_cast<unsigned long long>(unit.seq), bytes.c_str());
    }
    shm_snapshot_units_free(units);
    return 0;
}
