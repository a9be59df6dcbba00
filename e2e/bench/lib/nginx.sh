# shellcheck shell=bash
# The nginx setup the benchmarks compare against: a plain keep-alive reverse proxy in front of
# two backends, no access log, no response buffering. Sourced by gateway.sh and instructions.sh.

# write_nginx_conf DIR PORT BACKEND_A_PORT BACKEND_B_PORT [PROCESS_DIRECTIVES] [SERVER_DIRECTIVES]
# Writes DIR/nginx.conf (state under DIR). PROCESS_DIRECTIVES defaults to one worker per core.
# SERVER_DIRECTIVES go into the server block beside `listen PORT`: more listeners (gateway.sh's
# h2c and TLS ones) and their ssl_* settings; they proxy to the same backends.
write_nginx_conf() {
    local dir=$1 port=$2 backend_a=$3 backend_b=$4
    local processes=${5:-"worker_processes auto;"}
    local server_directives=${6:-}
    mkdir -p "$dir/logs"
    cat >"$dir/nginx.conf" <<CONF
$processes
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream engines {
        server 127.0.0.1:$backend_a;
        server 127.0.0.1:$backend_b;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$port;
$server_directives
        location / {
            proxy_pass http://engines;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
CONF
}
