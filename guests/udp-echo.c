/* A UDP echo server for the test guest (busybox's nc has no UDP): answers every datagram
 * on the port given with "echo:" and the datagram, so tests can tell the guest answered.
 * Usage: udp-echo PORT */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: udp-echo PORT\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udp-echo");
        return 1;
    }
    char buf[2048];
    memcpy(buf, "echo:", 5);
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(fd, buf + 5, sizeof buf - 5, 0, (struct sockaddr *)&peer, &len);
        if (n >= 0)
            sendto(fd, buf, n + 5, 0, (struct sockaddr *)&peer, len);
    }
}
