# Made by deploy/image/build.sh from target/release/concord and the libraries it links.
FROM scratch
COPY rootfs/ /
USER 10001:10001
ENV CONCORD_LISTEN=0.0.0.0:8080 \
    CONCORD_API_LISTEN=0.0.0.0:8081 \
    CONCORD_ADMIN_LISTEN=0.0.0.0:9090 \
    CONCORD_LOG=info
# client WebSocket, API (HTTP + gRPC), admin (/metrics, /healthz, /readyz), gossip, peer links
EXPOSE 8080 8081 9090 7946/udp 7947
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/concord", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/concord"]
CMD ["serve"]
