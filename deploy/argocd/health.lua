-- Argo CD health check for WorkerFleet (workerfleet.dev/v1alpha1), in the Lua 5.1 that
-- Argo CD runs. Install it as resource.customizations.health.workerfleet.dev_WorkerFleet
-- (deploy/argocd/argocd-cm.yaml carries this file as that key; a test keeps them equal).
-- It reads what the operator writes: observedGeneration, then the kstatus conditions
-- Stalled and Reconciling, then Ready (docs/operator.md, Status).
local hs = { status = "Progressing", message = "waiting for the operator" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if observed == nil or (generation ~= nil and observed < generation) then
  hs.message = "the operator has not yet acted on generation " .. tostring(generation)
  return hs
end
local by_type = {}
for _, condition in ipairs(obj.status.conditions or {}) do
  by_type[condition.type] = condition
end
local function said(condition)
  return condition.reason .. ": " .. (condition.message or "")
end
if obj.spec ~= nil and obj.spec.paused == true then
  return { status = "Suspended", message = obj.status.message or "paused" }
end
if by_type.Stalled ~= nil and by_type.Stalled.status == "True" then
  return { status = "Degraded", message = said(by_type.Stalled) }
end
if by_type.Ready ~= nil and by_type.Ready.status == "True" then
  return { status = "Healthy", message = by_type.Ready.message or "" }
end
if by_type.Reconciling ~= nil and by_type.Reconciling.status == "True" then
  hs.message = said(by_type.Reconciling)
elseif obj.status.message ~= nil then
  hs.message = obj.status.message
end
return hs
