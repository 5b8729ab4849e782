// The Flex Consumption plan and the Function App that runs the worker.
// Every connection is identity-based through one user-assigned identity: the host's
// storage, the deployment container, Cosmos DB (SDK and change-feed trigger) and
// Application Insights. No setting below holds a key.

param planName string
param appName string
param location string
param tags object = {}

param identityId string
param identityClientId string

param storageBlobEndpoint string
param deploymentContainerName string
param appInsightsConnectionString string

param cosmosEndpoint string
param cosmosDatabaseName string
param cosmosItemsContainerName string
param cosmosLeaseContainerName string

param workerStages string
param workerStageMap string
param workerModules string
param workerConcurrency int
param workerLeaseSeconds int
param workerSchedule string
param workerChangeFeed bool

@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// Settings the Functions host and the platform read.
var hostSettings = {
  AzureWebJobsStorage__blobServiceUri: storageBlobEndpoint
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // DefaultAzureCredential in the worker's Cosmos store picks this identity.
  AZURE_CLIENT_ID: identityClientId
}

// Settings the worker and its triggers read. The `COSMOS__` trio is the identity-based
// connection named `COSMOS`, used by the change-feed trigger and by the worker's store.
var workerSettings = {
  WORKER_STORE: 'cosmos'
  WORKER_CONCURRENCY: string(workerConcurrency)
  WORKER_LEASE_SECONDS: string(workerLeaseSeconds)
  WORKER_SCHEDULE: workerSchedule
  WORKER_CHANGE_FEED: workerChangeFeed ? 'true' : 'false'
  COSMOS__accountEndpoint: cosmosEndpoint
  COSMOS__credential: 'managedidentity'
  COSMOS__clientId: identityClientId
  COSMOS_DATABASE: cosmosDatabaseName
  COSMOS_CONTAINER: cosmosItemsContainerName
  COSMOS_LEASE_CONTAINER: cosmosLeaseContainerName
}

// Left out when empty, so that the worker's own defaults apply: every mapped stage,
// the registered stages only, no extra modules.
var optionalWorkerSettings = union(
  empty(workerStages) ? {} : {
    WORKER_STAGES: workerStages
  },
  empty(workerStageMap) ? {} : {
    WORKER_STAGE_MAP: workerStageMap
  },
  empty(workerModules) ? {} : {
    WORKER_MODULES: workerModules
  }
)

var appSettings = union(hostSettings, workerSettings, optionalWorkerSettings)

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: A zone outage delays work without losing any: items stay Ready in Cosmos DB and the next timer run after recovery picks them up.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17: The app serves no HTTP endpoint of its own (timer and change-feed triggers only), so there is no caller to ask for a client certificate.
  // checkov:skip=CKV_AZURE_212: numberOfWorkers does not apply to Flex Consumption, which scales instances on demand (up to maximumInstanceCount) and from zero.
  // checkov:skip=CKV_AZURE_213: A health check probes an HTTP path; the app has none, and a missed timer run is caught up by the next one.
  // checkov:skip=CKV_AZURE_222: azd deploys the package through the app's public deployment endpoint; inbound network rules would need VNet integration and a private endpoint.
  name: appName
  location: location
  tags: union(tags, {
    'azd-service-name': 'worker'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

output name string = app.name
output defaultHostName string = app.properties.defaultHostName
