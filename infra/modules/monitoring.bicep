// Log Analytics and Application Insights, both refusing key-based ingestion.
// The app's identity gets Monitoring Metrics Publisher on the component and nothing more:
// that is the role Entra-authenticated telemetry ingestion checks.

param logAnalyticsName string
param appInsightsName string
param location string
param tags object = {}
param identityPrincipalId string

@minValue(30)
param retentionInDays int = 30

// Monitoring Metrics Publisher
var metricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identityPrincipalId, metricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', metricsPublisherRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output appInsightsName string = appInsights.name
// The connection string names the component and its ingestion endpoint. It grants
// nothing by itself here: with local auth off, every send must carry an Entra token.
output connectionString string = appInsights.properties.ConnectionString
output workspaceName string = workspace.name
