-- cellplane balancer: written by nginx-agent into every rendered tree; do not edit.
--
-- Shared dict `cellplane_upstreams` holds, per pool (= domain):
--   "s:<pool>" -> JSON array of {host, port, weight}
--   "v:<pool>" -> version (etcd mod_revision of the upstream key); written after "s:".
-- Every worker caches the decoded list per pool and re-reads it when the version changes, so a
-- push is visible on the next request without a reload.
local cjson = require "cjson.safe"
local balancer = require "ngx.balancer"

local dict = ngx.shared.cellplane_upstreams
local _M = {}
local cache = {}

local function load(pool)
    local v = dict:get("v:" .. pool)
    if v == nil then
        cache[pool] = nil
        return nil
    end
    local c = cache[pool]
    if c and c.version == v then
        return c
    end
    local servers = cjson.decode(dict:get("s:" .. pool) or "[]") or {}
    local peers = {}
    for _, s in ipairs(servers) do
        peers[#peers + 1] = { host = s.host, port = s.port, weight = s.weight or 1, current = 0 }
    end
    c = { version = v, peers = peers }
    cache[pool] = c
    return c
end

-- access phase: decide "no backends" here (ngx.exit(503) in the balancer becomes a 500).
function _M.access()
    local c = load(ngx.var.cellplane_pool)
    if c == nil or #c.peers == 0 then
        return ngx.exit(503)
    end
    ngx.ctx.cellplane = c
end

-- smooth weighted round robin (as nginx's own upstream module)
local function pick(c)
    local best, total = nil, 0
    for _, p in ipairs(c.peers) do
        p.current = p.current + p.weight
        total = total + p.weight
        if best == nil or p.current > best.current then
            best = p
        end
    end
    best.current = best.current - total
    return best
end

function _M.balance()
    local ctx = ngx.ctx
    local c = ctx.cellplane or load(ngx.var.cellplane_pool)
    if c == nil or #c.peers == 0 then
        return ngx.exit(502)
    end
    local peer = pick(c)
    if ctx.cellplane_tried == nil then
        ctx.cellplane_tried = {}
        local tries = tonumber(ngx.var.cellplane_tries) or 1
        local more = math.min(tries, #c.peers) - 1
        if more > 0 then
            balancer.set_more_tries(more)
        end
    else
        -- a retry: prefer a peer not tried yet
        for _ = 1, #c.peers do
            if not ctx.cellplane_tried[peer] then
                break
            end
            peer = pick(c)
        end
    end
    ctx.cellplane_tried[peer] = true
    local ok, err = balancer.set_current_peer(peer.host, peer.port)
    if not ok then
        ngx.log(ngx.ERR, "cellplane: set_current_peer failed: ", err)
        return ngx.exit(502)
    end
end

local function apply(req, only_newer)
    if type(req) ~= "table" or type(req.pools) ~= "table" then
        return nil, "body must be {\"pools\": {...}}"
    end
    local n = 0
    for name, p in pairs(req.pools) do
        if type(p) ~= "table" or type(p.version) ~= "number" or type(p.servers) ~= "table" then
            return nil, "pool " .. tostring(name) .. " needs a numeric version and a servers array"
        end
        local cur = dict:get("v:" .. name)
        if not (only_newer and cur ~= nil and cur >= p.version) then
            local ok, err = dict:set("s:" .. name, cjson.encode(p.servers))
            if not ok then
                return nil, "shared dict: " .. tostring(err)
            end
            ok, err = dict:set("v:" .. name, p.version)
            if not ok then
                return nil, "shared dict: " .. tostring(err)
            end
            n = n + 1
        end
    end
    if req.replace and not only_newer then
        for _, k in ipairs(dict:get_keys(0)) do
            if k:sub(1, 2) == "v:" and req.pools[k:sub(3)] == nil then
                dict:delete(k)
                dict:delete("s:" .. k:sub(3))
            end
        end
    end
    return n
end

-- init_by_lua: seed the dict from the agent's snapshot file; never overwrite a newer push
-- (the dict survives reloads; init runs again on each one).
function _M.seed(path)
    local f = io.open(path, "r")
    if f == nil then
        return
    end
    local body = f:read("*a")
    f:close()
    local req = cjson.decode(body)
    if req == nil then
        ngx.log(ngx.WARN, "cellplane: unreadable upstream snapshot ", path)
        return
    end
    local _, err = apply(req, true)
    if err then
        ngx.log(ngx.WARN, "cellplane: upstream snapshot ", path, ": ", err)
    end
end

-- content handler of the loopback-only admin location.
function _M.admin()
    local method = ngx.req.get_method()
    if method == "GET" then
        local pools = {}
        for _, k in ipairs(dict:get_keys(0)) do
            if k:sub(1, 2) == "v:" then
                local name = k:sub(3)
                pools[name] = {
                    version = dict:get(k),
                    servers = cjson.decode(dict:get("s:" .. name) or "[]") or {},
                }
            end
        end
        ngx.header["Content-Type"] = "application/json"
        ngx.say(cjson.encode({ pools = pools }))
        return
    end
    if method ~= "POST" then
        return ngx.exit(405)
    end
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body == nil then
        local file = ngx.req.get_body_file()
        if file then
            local f = io.open(file, "r")
            if f then
                body = f:read("*a")
                f:close()
            end
        end
    end
    local req = body and cjson.decode(body)
    local n, err = apply(req, false)
    if err then
        ngx.status = 400
        ngx.say(err)
        return ngx.exit(400)
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode({ applied = n }))
end

return _M
