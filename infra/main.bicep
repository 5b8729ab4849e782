// Deploys the routing-item worker: a Flex Consumption Function App on Python 3.11, its
// storage, monitoring, and the Cosmos DB account holding the routing items.
// `azd up` fills the parameters from main.parameters.json and the azd environment.

targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; names and tags every resource.')
param environmentName string

@minLength(1)
@description('Region for every resource. It must offer Flex Consumption.')
param location string

@description('Object id of the deploying user. When set, it gets data access to Cosmos DB too, for `python -m worker status --store cosmos` from a workstation.')
param principalId string = ''

@description('Stages to process, in order, comma-separated. Empty: every mapped stage.')
param workerStages string = ''

@description('Stage map: JSON text, or the path of a JSON file shipped with the app. Empty: the registered stages only.')
param workerStageMap string = ''

@description('Extra stage modules, file paths or module names, comma-separated. Empty: none.')
param workerModules string = ''

@minValue(1)
@description('Items processed at once by one run.')
param workerConcurrency int = 8

@minValue(60)
@description('How long a claim holds before recovery may take it; the worker renews it while a call runs.')
param workerLeaseSeconds int = 300

@description('NCRONTAB schedule of the timer run (six fields, seconds first).')
param workerSchedule string = '0 */5 * * * *'

@description('Whether the change-feed trigger reacts to items as they become Ready.')
param workerChangeFeed bool = true

@minValue(0)
@description('RU/s shared by the Cosmos DB database. 0 makes the account serverless.')
param cosmosThroughput int = 0

@description('Cosmos DB database name.')
param cosmosDatabaseName string = 'OrchestratorDb'

@description('Cosmos DB container holding the routing items.')
param cosmosItemsContainerName string = 'RoutingItems'

@description('Cosmos DB container holding the change-feed trigger\'s leases.')
param cosmosLeaseContainerName string = 'leases'

@minValue(40)
@maxValue(1000)
@description('Upper bound on the instances Flex Consumption scales out to.')
param maximumInstanceCount int = 40

var tags = {
  'azd-env-name': environmentName
}
var token = toLower(uniqueString(subscription().id, environmentName, location))
var appName = 'func-${token}'
// Flex Consumption wants one deployment container per app; the name says whose it is.
var deploymentContainerName = 'app-package-${take(appName, 32)}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${token}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${token}'
    appInsightsName: 'appi-${token}'
    location: location
    tags: tags
    identityPrincipalId: identity.outputs.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${token}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    identityPrincipalId: identity.outputs.principalId
  }
}

module cosmos 'modules/cosmos.bicep' = {
  name: 'cosmos'
  scope: rg
  params: {
    name: 'cosmos-${token}'
    location: location
    tags: tags
    databaseName: cosmosDatabaseName
    itemsContainerName: cosmosItemsContainerName
    leaseContainerName: cosmosLeaseContainerName
    throughput: cosmosThroughput
    dataContributorPrincipalIds: empty(principalId) ? [
      identity.outputs.principalId
    ] : [
      identity.outputs.principalId
      principalId
    ]
  }
}

module app 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    planName: 'plan-${token}'
    appName: appName
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    appInsightsConnectionString: monitoring.outputs.connectionString
    cosmosEndpoint: cosmos.outputs.endpoint
    cosmosDatabaseName: cosmos.outputs.databaseName
    cosmosItemsContainerName: cosmos.outputs.itemsContainerName
    cosmosLeaseContainerName: cosmos.outputs.leaseContainerName
    workerStages: workerStages
    workerStageMap: workerStageMap
    workerModules: workerModules
    workerConcurrency: workerConcurrency
    workerLeaseSeconds: workerLeaseSeconds
    workerSchedule: workerSchedule
    workerChangeFeed: workerChangeFeed
    maximumInstanceCount: maximumInstanceCount
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.name
output AZURE_APPLICATION_INSIGHTS_NAME string = monitoring.outputs.appInsightsName
output AZURE_COSMOS_ACCOUNT_NAME string = cosmos.outputs.name
output AZURE_COSMOS_ENDPOINT string = cosmos.outputs.endpoint
