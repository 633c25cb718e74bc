# Pieces the load scripts share (sourced by run.sh, extra_rows.sh, instructions.sh, ab.sh and
# cachesim.sh), on top of scripts/lib.sh (the upstream nginx, the gateway configs,
# wait_ready), which the shipped build script uses too.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/lib.sh"


# nginx_proxy_conf WORK PORT PORT_UP [TOP_LINES] [SERVER_LINES]: prints the config of the
# reference, nginx's plain keep-alive proxy with one worker on 127.0.0.1:PORT in front of
# 127.0.0.1:PORT_UP; its pid goes to WORK/nginx-proxy.pid. TOP_LINES go before the events
# block (affinity, no daemon), SERVER_LINES into the server block (a TLS listener).
nginx_proxy_conf() {
    cat <<NGINX
worker_processes 1;
${4:-}
pid $1/nginx-proxy.pid;
error_log $1/nginx-proxy-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$3; keepalive 128; }
  server { listen 127.0.0.1:$2; ${5:-}
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX
}




