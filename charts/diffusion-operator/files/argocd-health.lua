-- Argo CD health check for InferencePool (diffusion.serving.dev/v1alpha1).
-- Install: resource.customizations.health.diffusion.serving.dev_InferencePool in argocd-cm
-- (see docs/operations.md). Maps the operator's status to Argo CD health:
--   Suspended   rollout paused (by an SRE or by the analysis error policy)
--   Degraded    Degraded/Stalled condition True, phase Degraded, or the last rollout was
--               rolled back (stable still serves; the bad revision stays in Git until fixed)
--   Healthy     phase Ready with Ready=True for the current generation
--   Progressing everything else: not yet observed, first deploy, scaling, canary in flight
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function msg(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the pool"
  return hs
end

local status = obj.status
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local rollout = status.rollout or {}
if status.phase == "Paused" or rollout.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Rollout paused" .. (rollout.pausedBy and (" by " .. rollout.pausedBy) or "") ..
    ": kubectl diffusion resume " .. obj.metadata.name
  return hs
end

local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = msg(degraded, degraded.reason or "Degraded")
  return hs
end
local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = msg(stalled, stalled.reason or "Stalled")
  return hs
end
if status.phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = "Not enough ready replicas"
  return hs
end
if status.phase == "RolledBack" or rollout.phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = "Rollout of " .. tostring(rollout.canaryRevision or "the canary") .. " rolled back: " ..
    tostring(rollout.reason or "") .. " " .. tostring(rollout.message or "")
  return hs
end

local ready = condition(status, "Ready")
if status.phase == "Ready" and (ready == nil or ready.status == "True") then
  hs.status = "Healthy"
  hs.message = msg(ready, "Ready")
  return hs
end

hs.status = "Progressing"
local progressing = condition(status, "Progressing")
hs.message = msg(progressing, "Phase " .. tostring(status.phase or "unknown"))
return hs
